"""The generative model behind ``hmoe data synth``: a seeded world and one block of impressions.

Pure numpy, no Ray and no I/O: ``synth.py`` runs :func:`generate_block` in parallel and writes
what it returns. Everything random comes from ``numpy.random.default_rng([seed, stream, index])``
so a block depends only on (seed, block index, config), never on scheduling.

The click logit of an impression of item ``i`` (category ``c``) shown to user ``u`` is::

    bias + affinity * <z_u, s_click * v_i> / sqrt(D)           latent interest (partly category)
         - age_curvature * ((age_u - age_peak) / 10) ** 2       smooth ordinal effects
         + price_effect * (price_i - mid) + hour_amplitude * cos(2 pi (hour - hour_peak) / 24)
         + device_effect[device] - fatigue * earlier_exposures(u, i)
         + exposure_inflation * log(1 + earlier_exposures(u, i))  exposure, not interest
         + sum_p planted[c, h_p, p]                             the planted sequence effect

where ``h_p`` is the category of the user's ``p``-th most recent earlier click (``p = 0`` the
latest). ``planted[c_t, c_b, p] = strength * decay**p * w`` with ``w = 1`` when ``c_b == c_t``,
``w = related`` when ``c_b`` is another category of the same semantic group as ``c_t`` and
``w = 0`` otherwise (and for ``p >= positions``). Conversion (given a click) and like use the same
form with their own sign vectors ``s_task`` (the conflicting latent dimensions), price effects and
no sequence term. ``bias`` is calibrated per block and task (``calibrate_biases``).

``exposure_inflation`` plants exposure-inflated clicks: showing an item again raises its click
probability whatever the user's interest. The user's *interest* in a row is the click logit
without that term (along the same simulated click history); when the term is on, the log
records its probability (``INTEREST_PROB``) and a click drawn from it with the row's own uniform
(``INTEREST_CLICK``: a subset of the observed clicks, the ones interest alone would have made).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hmoe.config import Config, ConfigError, config

__all__ = [
    "INTEREST_CLICK",
    "INTEREST_PROB",
    "KNOWN_TASKS",
    "Block",
    "BlockLayout",
    "PlantedConfig",
    "SynthConfig",
    "World",
    "build_world",
    "generate_block",
    "plan_blocks",
]

WORLD_STREAM = 0
BLOCK_STREAM = 1
HOURS_PER_DAY = 24
SECONDS_PER_HOUR = 3600
AGE_SCALE = 10.0  # age effects are expressed per decade
SAMPLER_WINDOW = 32  # rows per user per step of the click sampler (speed only, same output)
INTEREST_PROB = "click_interest_prob"  # the planted interest's click probability of a row
INTEREST_CLICK = "click_interest"  # a click drawn from it (written when exposure_inflation > 0)


KNOWN_TASKS = ("click", "conversion", "like")


@config
class PlantedConfig(Config):
    """The planted semantic-temporal effect: recent clicks of the target's category (module doc)."""

    strength: float = 1.2  # logit of a same-category behaviour at position 0
    decay: float = 0.7  # per position further back
    related: float = 0.35  # weight of another category of the same semantic group
    positions: int = 8  # P: behaviours further back contribute nothing
    target_category: int = 0  # the target category whose [C, P] matrix is written

    def __post_init__(self) -> None:
        if self.positions < 1:
            raise ConfigError("planted.positions must be >= 1")
        if not 0.0 <= self.decay <= 1.0 or self.strength < 0 or self.related < 0:
            raise ConfigError("planted: need 0 <= decay <= 1, strength >= 0, related >= 0")


@config
class SynthConfig(Config):
    """Everything tunable about the synthetic world, the logit model and the output layout."""

    users: int | None = None  # None: ceil(rows / rows_per_user)
    rows_per_user: int = 40
    items: int = 20_000
    categories: int = 40
    category_groups: int = 8  # semantic groups of related categories
    tasks: tuple[str, ...] = KNOWN_TASKS
    click_rate: float = 0.035
    conversion_rate: float = 0.12  # P(conversion | click)
    like_rate: float = 0.02
    user_zipf: float = 0.8  # activity of the users of a block
    item_zipf: float = 1.05
    category_zipf: float = 1.0  # share of items per category
    latent_dim: int = 16
    embedding_dim: int = 16
    embedding_noise: float = 1.0  # noise std relative to the projected latent's std
    group_share: float = 0.5  # variance of a category vector shared with its group
    category_weight: float = 0.6  # variance of an item vector shared with its category
    affinity_scale: float = 1.5  # weight of <user, item> / sqrt(D) in every task's logit
    conflict_fraction: float = 0.5  # latent dims whose sign flips for conversion / like
    planted: PlantedConfig = PlantedConfig()
    repeat_prob: float = 0.25  # an impression re-shows one of the user's recent items
    repeat_window: int = 10  # ... chosen among the user's last this-many impressions
    fatigue: float = 0.5  # click logit lost per earlier exposure of the same item
    # click logit gained per log(1 + earlier exposures) of the same item, independent of the user's
    # interest; > 0 also writes the interest columns (synth_model docstring)
    exposure_inflation: float = 0.0
    age_range: tuple[int, int] = (18, 65)
    age_peak: float = 30.0
    age_curvature: float = 0.08  # click logit lost per squared decade away from age_peak
    price_levels: int = 10
    price_effect_click: float = -0.08  # per price level above the middle
    price_effect_conversion: float = 0.12
    hour_amplitude: float = 0.3
    hour_peak: float = 20.0  # UTC hour of the highest click propensity
    devices: tuple[str, ...] = ("android", "ios", "web")
    device_weights: tuple[float, ...] = (0.55, 0.35, 0.10)
    device_effects: tuple[float, ...] = (0.0, 0.15, -0.2)
    genders: tuple[str, ...] = ("f", "m", "u")
    start_timestamp: int = 1_700_000_000
    span_seconds: int = 30 * 86_400
    sequence_max_len: int = 20  # L of the spec's behaviour sequence
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # temporal fractions of the spec
    block_rows: int = 100_000  # rows generated (and held) by one task
    calibration_steps: int = 12  # most secant steps per task bias
    calibration_tolerance: float = 0.002  # relative error of a block's expected rate
    bias_search: tuple[float, float] = (-20.0, 10.0)

    def __post_init__(self) -> None:
        _check_config(self)


def _check_config(cfg: SynthConfig) -> None:
    if not cfg.tasks or cfg.tasks[0] != "click" or len(set(cfg.tasks)) != len(cfg.tasks):
        raise ConfigError(f"tasks must start with 'click' and be distinct, got {list(cfg.tasks)}")
    unknown = sorted(set(cfg.tasks) - set(KNOWN_TASKS))
    if unknown:
        raise ConfigError(f"unknown task(s) {unknown}; valid: {list(KNOWN_TASKS)}")
    for name in ("click_rate", "conversion_rate", "like_rate"):
        if not 0.0 < getattr(cfg, name) < 1.0:
            raise ConfigError(f"{name} must be in (0, 1), got {getattr(cfg, name)}")
    for name in ("items", "categories", "category_groups", "latent_dim", "embedding_dim"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be >= 1")
    for name in ("rows_per_user", "block_rows", "calibration_steps", "price_levels"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be >= 1")
    if cfg.users is not None and cfg.users < 1:
        raise ConfigError("users must be >= 1 (or null)")
    if cfg.category_groups > cfg.categories:
        raise ConfigError("category_groups must be <= categories")
    if not cfg.planted.target_category < cfg.categories:
        raise ConfigError("planted.target_category must be < categories")
    if cfg.planted.positions > cfg.sequence_max_len:
        raise ConfigError("planted.positions must be <= sequence_max_len (prepare keeps L)")
    for name in ("group_share", "category_weight", "conflict_fraction", "repeat_prob"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ConfigError(f"{name} must be in [0, 1]")
    if not len(cfg.devices) == len(cfg.device_weights) == len(cfg.device_effects):
        raise ConfigError("devices, device_weights and device_effects must have equal lengths")
    if min(cfg.device_weights) < 0 or sum(cfg.device_weights) <= 0:
        raise ConfigError("device_weights must be >= 0 with a positive sum")
    if cfg.age_range[0] > cfg.age_range[1] or cfg.repeat_window < 1 or not cfg.genders:
        raise ConfigError("need age_range[0] <= age_range[1], repeat_window >= 1, genders")
    if cfg.span_seconds < 1 or cfg.bias_search[0] >= cfg.bias_search[1]:
        raise ConfigError("need span_seconds >= 1 and bias_search increasing")
    if not 0.0 < cfg.calibration_tolerance < 1.0:
        raise ConfigError("calibration_tolerance must be in (0, 1)")
    if cfg.exposure_inflation < 0.0:
        raise ConfigError(
            f"exposure_inflation must be >= 0 (fatigue lowers clicks), got {cfg.exposure_inflation}"
        )


@dataclass(frozen=True)
class World:
    """Global, seed-determined parts shared by every block (items and categories)."""

    category_group: np.ndarray  # [C] int
    item_category: np.ndarray  # [I] int32
    item_price: np.ndarray  # [I] int32, 1..price_levels
    item_vectors: np.ndarray  # [I, D] float32 latent
    item_embeddings: np.ndarray  # [I, E] float32, a noisy view of the latent
    item_cdf: np.ndarray  # [I] float64 popularity CDF over item ids
    projection: np.ndarray  # [D, E] latent -> embedding space
    task_signs: np.ndarray  # [K, D] +-1; conflicting dims flip sign for conversion / like
    planted: np.ndarray  # [C, C + 1, P] logit of a behaviour; index 0 of axis 1 = no behaviour


@dataclass(frozen=True)
class BlockLayout:
    """Block ``index`` owns ``rows`` impressions of users ``[first_user, first_user + users)``."""

    index: int
    rows: int
    first_user: int
    users: int


@dataclass(frozen=True)
class Block:
    """One generated block: impression columns (time-sorted) and its users' side-table columns."""

    impressions: dict[str, np.ndarray]
    users: dict[str, np.ndarray]
    biases: np.ndarray  # [K] the calibrated logit bias of each task


def zipf_weights(n: int, exponent: float) -> np.ndarray:
    """Normalised ``1 / rank ** exponent`` for ranks 1..n."""
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    return w / w.sum()


def plan_blocks(rows: int, total_users: int, block_rows: int) -> list[BlockLayout]:
    """Split ``rows`` and ``total_users`` evenly over ``ceil(rows / block_rows)`` blocks."""
    n = math.ceil(rows / block_rows)
    if total_users < n:
        raise ValueError(f"{total_users} users cannot fill {n} blocks; raise users or block_rows")
    return [
        BlockLayout(
            index=b,
            rows=(b + 1) * rows // n - b * rows // n,
            first_user=b * total_users // n,
            users=(b + 1) * total_users // n - b * total_users // n,
        )
        for b in range(n)
    ]


def build_world(seed: int, cfg: SynthConfig) -> World:
    """Categories, items, the embedding projection and the planted table, from ``seed`` alone."""
    rng = np.random.default_rng([seed, WORLD_STREAM])
    d, c = cfg.latent_dim, cfg.categories
    group = np.arange(c) % cfg.category_groups
    group_vectors = rng.standard_normal((cfg.category_groups, d))
    # a category is close to the other categories of its group (its semantic neighbours)
    share = cfg.group_share
    cat_vectors = math.sqrt(share) * group_vectors[group]
    cat_vectors += math.sqrt(1 - share) * rng.standard_normal((c, d))
    item_category = rng.choice(c, size=cfg.items, p=zipf_weights(c, cfg.category_zipf))
    w = cfg.category_weight
    item_vectors = math.sqrt(w) * cat_vectors[item_category]
    item_vectors += math.sqrt(1 - w) * rng.standard_normal((cfg.items, d))
    popularity = zipf_weights(cfg.items, cfg.item_zipf)[rng.permutation(cfg.items)]
    projection = rng.standard_normal((d, cfg.embedding_dim)) / math.sqrt(d)
    item_emb = _noisy_view(rng, item_vectors, projection, cfg.embedding_noise)
    signs = np.ones((len(cfg.tasks), d))
    flipped = round(cfg.conflict_fraction * d)
    for k in range(1, len(cfg.tasks)):  # task k flips its own slice of dims
        start = (k - 1) * (d - flipped) // max(len(cfg.tasks) - 1, 1)
        signs[k, start : start + flipped] = -1.0
    return World(
        category_group=group,
        item_category=item_category.astype(np.int32),
        item_price=rng.integers(1, cfg.price_levels + 1, size=cfg.items).astype(np.int32),
        item_vectors=item_vectors.astype(np.float32),
        item_embeddings=item_emb,
        item_cdf=np.cumsum(popularity),
        projection=projection,
        task_signs=signs,
        planted=planted_table(group, cfg),
    )


def planted_table(group: np.ndarray, cfg: SynthConfig) -> np.ndarray:
    """``[C_target, C_behaviour + 1, P]`` additive click logits (see the module docstring)."""
    p = cfg.planted
    c = len(group)
    same = np.eye(c)
    related = (group[:, None] == group[None, :]) & ~np.eye(c, dtype=bool)
    weight = same + p.related * related  # [C, C]
    decay = p.strength * p.decay ** np.arange(p.positions)  # [P]
    table = np.zeros((c, c + 1, p.positions))
    table[:, 1:, :] = weight[:, :, None] * decay[None, None, :]
    return table


def _noisy_view(
    rng: np.random.Generator, latent: np.ndarray, projection: np.ndarray, noise: float
) -> np.ndarray:
    """A pre-trained embedding: the projected latent plus isotropic noise of relative std."""
    clean = latent @ projection
    scale = noise * clean.std()
    return (clean + scale * rng.standard_normal(clean.shape)).astype(np.float32)


def generate_block(world: World, layout: BlockLayout, seed: int, cfg: SynthConfig) -> Block:
    """Draw one block, calibrate its task biases to the configured rates, sample its labels."""
    draws = draw_block(world, layout, seed, cfg, stream=BLOCK_STREAM)
    biases, click = calibrate_biases(draws, world, cfg)
    labels = simulate_labels(draws, world, biases, cfg.tasks, click)
    block = assemble_block(draws, labels, biases, world, layout, cfg)
    if cfg.exposure_inflation > 0.0:
        _add_interest(block, draws, world, float(biases[0]), cfg.exposure_inflation)
    return block


def _add_interest(
    block: Block, draws: Draws, world: World, click_bias: float, inflation: float
) -> None:
    """The planted interest columns (module docstring), in the impressions' row order."""
    _, prob = simulate_clicks(draws, world, click_bias)  # deterministic: the labels' own path
    prob = np.clip(prob, np.finfo(np.float64).tiny, 1.0 - np.finfo(np.float64).eps)
    interest = sigmoid(np.log(prob) - np.log1p(-prob) - inflation * np.log1p(draws.exposure))
    order = _row_order(draws)
    block.impressions[INTEREST_PROB] = interest[order]
    block.impressions[INTEREST_CLICK] = (draws.uniforms[0] < interest)[order].astype(np.int8)


@dataclass(frozen=True)
class Draws:
    """Everything random about a block except the label outcomes' dependence on the biases.

    Rows are user-major: users sorted by descending activity, each user's rows in time order.
    """

    counts: np.ndarray  # [U] rows per user, in the row order's user order
    user_local: np.ndarray  # [U] local user index of each user in row order
    user_vectors: np.ndarray  # [U_block, D]
    user_embeddings: np.ndarray  # [U_block, E]
    age: np.ndarray  # [U_block]
    gender: np.ndarray  # [U_block]
    row_user: np.ndarray  # [R] local user index
    timestamp: np.ndarray  # [R] int64 seconds, strictly increasing within a user
    item: np.ndarray  # [R]
    exposure: np.ndarray  # [R] earlier exposures of the same user and item
    device: np.ndarray  # [R]
    scores: np.ndarray  # [K, R] static logits without bias
    uniforms: np.ndarray  # [K, R]


def draw_block(
    world: World, layout: BlockLayout, seed: int, cfg: SynthConfig, *, stream: int
) -> Draws:
    rng = np.random.default_rng([seed, stream, layout.index])
    n_users = layout.users
    user_vectors = rng.standard_normal((n_users, cfg.latent_dim)).astype(np.float32)
    user_emb = _noisy_view(rng, user_vectors, world.projection, cfg.embedding_noise)
    age = rng.integers(cfg.age_range[0], cfg.age_range[1] + 1, size=n_users)
    gender = rng.integers(0, len(cfg.genders), size=n_users)
    activity = zipf_weights(n_users, cfg.user_zipf)[rng.permutation(n_users)]
    counts_local = rng.multinomial(layout.rows, activity)
    order = np.argsort(-counts_local, kind="stable")
    counts = counts_local[order]
    row_user = np.repeat(order, counts)
    position = np.arange(layout.rows) - np.repeat(np.cumsum(counts) - counts, counts)
    timestamp = _timestamps(rng, row_user, position, cfg)
    item = _items(rng, world, position, cfg)
    exposure = _exposure_counts(row_user, item, cfg.items)
    device = rng.choice(len(cfg.devices), size=layout.rows, p=_normalised(cfg.device_weights))
    scores = _static_scores(
        world, user_vectors, age, row_user, item, timestamp, device, exposure, cfg
    )
    return Draws(
        counts=counts,
        user_local=order,
        user_vectors=user_vectors,
        user_embeddings=user_emb,
        age=age,
        gender=gender,
        row_user=row_user,
        timestamp=timestamp,
        item=item,
        exposure=exposure,
        device=device,
        scores=scores,
        uniforms=rng.random((len(cfg.tasks), layout.rows)),
    )


def _normalised(weights: tuple[float, ...]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    return w / w.sum()


def _timestamps(
    rng: np.random.Generator, row_user: np.ndarray, position: np.ndarray, cfg: SynthConfig
) -> np.ndarray:
    """Uniform times over the span, sorted and made strictly increasing within each user."""
    raw = rng.integers(0, cfg.span_seconds, size=len(row_user))
    rank = _run_ids(row_user)
    raw = raw[np.lexsort((raw, rank))]  # rows are user-major: sort times within each user
    # strictly increasing: t'_j = j + cummax(t_i - i) per user; the offset separates users
    offset = rank.astype(np.int64) * (2 * (cfg.span_seconds + len(row_user)))
    lifted = np.maximum.accumulate(raw - position + offset) - offset + position
    return cfg.start_timestamp + lifted.astype(np.int64)


def _run_ids(values: np.ndarray) -> np.ndarray:
    """0, 0, 1, 1, 1, 2, ... numbering the runs of equal consecutive values."""
    if len(values) == 0:
        return values.astype(np.int64)
    return np.concatenate([[0], np.cumsum(values[1:] != values[:-1])])


def _items(
    rng: np.random.Generator, world: World, position: np.ndarray, cfg: SynthConfig
) -> np.ndarray:
    """Popular items, and re-shows of one of the user's ``repeat_window`` previous impressions."""
    n = len(position)
    fresh = np.minimum(np.searchsorted(world.item_cdf, rng.random(n)), cfg.items - 1)
    back = rng.integers(1, cfg.repeat_window + 1, size=n)
    back = np.minimum(back, position)  # position 0 has nothing to repeat
    repeat = (rng.random(n) < cfg.repeat_prob) & (back > 0)
    source = np.where(repeat, np.arange(n) - back, np.arange(n))
    while True:  # a repeat of a repeat points to the original fresh draw (pointer jumping)
        nxt = source[source]
        if np.array_equal(nxt, source):
            break
        source = nxt
    return fresh[source].astype(np.int64)


def _exposure_counts(row_user: np.ndarray, item: np.ndarray, num_items: int) -> np.ndarray:
    """For each row, how many earlier rows have the same user and item (rows are time-ordered)."""
    key = row_user.astype(np.int64) * num_items + item
    order = np.argsort(key, kind="stable")  # stable: time order kept inside each (user, item)
    sorted_key = key[order]
    starts = np.concatenate([[True], sorted_key[1:] != sorted_key[:-1]])
    group_start = np.maximum.accumulate(np.where(starts, np.arange(len(key)), 0))
    counts = np.empty(len(key), dtype=np.int64)
    counts[order] = np.arange(len(key)) - group_start
    return counts


def _static_scores(
    world: World,
    user_vectors: np.ndarray,
    age: np.ndarray,
    row_user: np.ndarray,
    item: np.ndarray,
    timestamp: np.ndarray,
    device: np.ndarray,
    exposure: np.ndarray,
    cfg: SynthConfig,
) -> np.ndarray:
    """``[K, R]`` logits without bias and without the sequence term (module docstring)."""
    product = user_vectors[row_user] * world.item_vectors[item]  # [R, D]
    affinity = cfg.affinity_scale / math.sqrt(cfg.latent_dim) * (product @ world.task_signs.T)
    price = world.item_price[item] - (cfg.price_levels + 1) / 2
    age_term = -cfg.age_curvature * ((age[row_user] - cfg.age_peak) / AGE_SCALE) ** 2
    hour = hour_of_day(timestamp)
    hour_term = cfg.hour_amplitude * np.cos(2 * np.pi * (hour - cfg.hour_peak) / HOURS_PER_DAY)
    device_term = np.asarray(cfg.device_effects)[device]
    scores = affinity.T  # [K, R]
    exposure_term = cfg.exposure_inflation * np.log1p(exposure) - cfg.fatigue * exposure
    scores[0] += age_term + hour_term + device_term + exposure_term
    scores[0] += cfg.price_effect_click * price
    if "conversion" in cfg.tasks:
        scores[cfg.tasks.index("conversion")] += cfg.price_effect_conversion * price
    return scores


def hour_of_day(timestamp: np.ndarray) -> np.ndarray:
    return (timestamp // SECONDS_PER_HOUR) % HOURS_PER_DAY


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def simulate_clicks(draws: Draws, world: World, bias: float) -> tuple[np.ndarray, np.ndarray]:
    """Sample clicks user by user in time order: a click joins the user's history and raises
    later same-category click logits through ``world.planted``. Returns (click [R], prob [R]).

    Exact but vectorised over users and over a window of each user's next rows: the history
    only changes at a click, so the window's rows up to its first click are final as computed.
    """
    counts = draws.counts
    starts = np.cumsum(counts) - counts
    category = world.item_category[draws.item]
    base = bias + draws.scores[0]
    uniforms = draws.uniforms[0]
    positions = np.arange(world.planted.shape[2])
    offsets = np.arange(SAMPLER_WINDOW)
    # history[u, p] = 1 + category of user u's p-th latest click; 0 = no such click, and
    # lift[u, c] = the planted logit of that history for a target of category c
    history = np.zeros((len(counts), len(positions)), dtype=np.int64)
    lift = np.zeros((len(counts), world.planted.shape[0]))
    done = np.zeros(len(counts), dtype=np.int64)  # rows of each user already final
    click = np.zeros(len(draws.item), dtype=bool)
    prob = np.zeros(len(draws.item))
    active = np.flatnonzero(counts > 0)
    while len(active):
        position_AW = done[active, None] + offsets
        real_AW = position_AW < counts[active, None]
        rows_AW = np.where(real_AW, starts[active, None] + position_AW, 0)
        target_AW = category[rows_AW]
        p_AW = sigmoid(base[rows_AW] + lift[active[:, None], target_AW])
        hit_AW = (uniforms[rows_AW] < p_AW) & real_AW
        clicked = hit_AW.any(axis=1)
        first = np.where(clicked, hit_AW.argmax(axis=1), SAMPLER_WINDOW)
        final_AW = real_AW & (offsets <= first[:, None])
        prob[rows_AW[final_AW]] = p_AW[final_AW]
        users = active[clicked]
        rows = rows_AW[clicked, first[clicked]]
        click[rows] = True
        history[users, 1:] = history[users, :-1]
        history[users, 0] = category[rows] + 1
        lift[users] = world.planted[:, history[users], positions].sum(axis=-1).T
        done[active] += np.where(clicked, first + 1, real_AW.sum(axis=1))
        active = active[done[active] < counts[active]]
    return click, prob


def simulate_labels(
    draws: Draws,
    world: World,
    biases: np.ndarray,
    tasks: tuple[str, ...],
    click: np.ndarray | None = None,
) -> np.ndarray:
    """``[K, R]`` int8 labels; a conversion needs a click, a like does not. ``click``: the
    clicks already simulated with ``biases[0]`` (simulated here when not given)."""
    if click is None:
        click, _ = simulate_clicks(draws, world, float(biases[0]))
    labels = np.zeros(draws.scores.shape, dtype=np.int8)
    labels[0] = click
    for k in range(1, len(tasks)):
        hit = draws.uniforms[k] < sigmoid(biases[k] + draws.scores[k])
        labels[k] = hit & click if tasks[k] == "conversion" else hit
    return labels


def calibrate_biases(draws: Draws, world: World, cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-task logit biases with which this block's expected rates equal the configured ones,
    and the block's clicks under the calibrated click bias.

    The click rate is the mean click probability along the simulated, history-dependent path
    (the block's random numbers fixed); conversion is calibrated on the clicked rows.
    """
    biases = np.zeros(len(cfg.tasks))
    paths: dict[float, np.ndarray] = {}  # bias -> clicks: the solver's last path is the answer

    def click_rate(bias: float) -> float:
        click, prob = simulate_clicks(draws, world, bias)
        paths.clear()
        paths[bias] = click
        return float(prob.mean())

    start = _logit(cfg.click_rate) - float(np.mean(draws.scores[0]))
    biases[0] = _solve(click_rate, cfg.click_rate, start, cfg)
    click = paths.get(float(biases[0]))
    if click is None:
        click = simulate_clicks(draws, world, float(biases[0]))[0]
    for k, task in enumerate(cfg.tasks[1:], start=1):
        scores = draws.scores[k][click] if task == "conversion" else draws.scores[k]
        if len(scores) == 0:  # a block without clicks: calibrate on all rows instead
            scores = draws.scores[k]
        target = cfg.conversion_rate if task == "conversion" else cfg.like_rate
        start = _logit(target) - float(np.mean(scores))
        biases[k] = _solve(lambda b, s=scores: sigmoid(b + s).mean(), target, start, cfg)
    return biases, click


def _logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))


def _solve(
    rate_of: Callable[[float], float], target: float, start: float, cfg: SynthConfig
) -> float:
    """The bias where the increasing ``rate_of(bias)`` meets ``target`` (within
    ``calibration_tolerance``, relative): secant steps on the logit of the rate, which is close
    to linear in the bias with slope ~1, from ``start``; kept inside ``cfg.bias_search``."""
    lo, hi = cfg.bias_search
    bias = min(max(start, lo), hi)
    rate = rate_of(bias)
    slope = 1.0
    for _ in range(cfg.calibration_steps):
        if abs(rate - target) <= cfg.calibration_tolerance * target:
            break
        gap = _logit(rate) - _logit(target)
        step = min(max(bias - gap / slope, lo), hi)
        new_rate = rate_of(step)
        rise = _logit(new_rate) - _logit(rate)
        if step != bias and rise > 0:
            slope = rise / (step - bias)
        bias, rate = step, new_rate
    return bias


def resolved_users(rows: int, cfg: SynthConfig) -> int:
    """``cfg.users``, or one user per ``rows_per_user`` impressions."""
    return cfg.users if cfg.users is not None else math.ceil(rows / cfg.rows_per_user)


def _row_order(draws: Draws) -> np.ndarray:
    """The written log's row order: by time, then user."""
    return np.lexsort((draws.row_user, draws.timestamp))


def assemble_block(
    draws: Draws,
    labels: np.ndarray,
    biases: np.ndarray,
    world: World,
    layout: BlockLayout,
    cfg: SynthConfig,
) -> Block:
    """Columns of the impression log (sorted by time, then user) and of the block's users."""
    order = _row_order(draws)
    item = draws.item[order]
    user_id = layout.first_user + draws.row_user[order]
    impressions = {
        "timestamp": draws.timestamp[order],
        "user_id": user_id.astype(np.int64),
        "item_id": item,
        "category": world.item_category[item],
        "price_level": world.item_price[item],
        "hour": hour_of_day(draws.timestamp[order]).astype(np.int32),
        "device": np.asarray(cfg.devices, dtype=object)[draws.device[order]],
        "age": draws.age[draws.row_user[order]].astype(np.int32),
        "gender": np.asarray(cfg.genders, dtype=object)[draws.gender[draws.row_user[order]]],
    }
    for k, task in enumerate(cfg.tasks):
        impressions[task] = labels[k][order]
    users = {
        "user_id": layout.first_user + np.arange(layout.users, dtype=np.int64),
        "age": draws.age.astype(np.int32),
        "gender": np.asarray(cfg.genders, dtype=object)[draws.gender],
        "user_emb": draws.user_embeddings,
    }
    return Block(impressions=impressions, users=users, biases=biases)
