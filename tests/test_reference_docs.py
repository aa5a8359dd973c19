"""docs/config.md and docs/data_spec.md are generated from the config classes: they are
current, and every key has a type, a default and a meaning."""

from __future__ import annotations

import pytest

from hmoe.jobs.reference import PAGES, keys_of, render_config_page
from hmoe.platform.data.spec import DatasetSpec
from hmoe.platform.experiment import ExperimentConfig
from tests.conftest import REPO_ROOT

REGENERATE = "python -m hmoe.jobs.reference docs/"


@pytest.mark.parametrize("page", sorted(PAGES))
def test_the_reference_page_is_current(page: str) -> None:
    written = (REPO_ROOT / "docs" / page).read_text()
    assert written == PAGES[page](), f"docs/{page} is stale: run `{REGENERATE}`"


@pytest.mark.parametrize("root", [ExperimentConfig, DatasetSpec], ids=lambda c: c.__name__)
def test_every_key_says_what_it_means(root) -> None:
    undocumented = sorted(
        {f"{k.owner}.{k.path.rsplit('.', 1)[-1]}" for k in keys_of(root) if not k.meaning}
    )
    assert not undocumented, (
        f"give these fields a comment (on or above their line) or name them in the class "
        f"docstring: {undocumented}"
    )


def test_every_path_of_a_preset_is_on_the_page() -> None:
    """Each key of a real preset's config is listed: in a table, or under a section that names
    the table of its class (a class met again is listed once)."""
    from hmoe.config import iter_configs
    from hmoe.models.zoo import get_preset
    from hmoe.platform.experiment import DataConfig

    model = get_preset("hmoe_stem").model
    cfg = ExperimentConfig(preset="hmoe_stem", data=DataConfig(path="x"), model=model)
    page = render_config_page()
    for prefix, sub in iter_configs(cfg):
        for name in type(sub).__dataclass_fields__:
            path = f"{prefix}.{name}" if prefix else name
            assert f"| `{path}` |" in page or f"## `{prefix}`" in page, path
