"""The fenced code blocks of README.md and docs/*.md, split into the commands a reader types.

A block's language says what it is: ``bash`` (also ``sh``, ``shell``, ``console``) holds commands,
``python`` a snippet, and ``text``, ``yaml`` ... hold output or file contents. A fence without a
language is refused, so that no command can hide in an unmarked block.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHELL_LANGUAGES = frozenset({"bash", "sh", "shell", "console"})
PYTHON_LANGUAGE = "python"
#: blocks that show output or file contents, never run
DISPLAY_LANGUAGES = frozenset({"text", "yaml", "json", "toml", "ini"})
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")
HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*$")


def doc_files() -> list[Path]:
    """README.md and the top-level docs, in a stable order."""
    return [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Block:
    doc: str  # path relative to the repository root
    section: str  # the heading the block sits under
    lang: str
    line: int  # 1-based line of the opening fence
    text: str

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line} ({self.section})"

    @property
    def runnable(self) -> bool:
        return self.lang in SHELL_LANGUAGES or self.lang == PYTHON_LANGUAGE

    def commands(self) -> list[str]:
        """The shell commands of the block, one per logical line (``\\`` joins lines)."""
        if self.lang == PYTHON_LANGUAGE:
            return [self.text]
        commands, pending = [], ""
        for raw in self.text.splitlines():
            line = pending + raw.strip()
            if line.endswith("\\"):
                pending = line[:-1].rstrip() + " "
                continue
            pending = ""
            if line and not line.startswith("#"):
                commands.append(line)
        if pending.strip():
            commands.append(pending.strip())
        return commands


def command_key(command: str) -> str:
    """A command without its comment and with normalised spacing: two commands that differ only
    there run the same way. A Python snippet is its own key."""
    if "\n" in command:
        return command.strip()
    return shlex.join(shlex.split(command, comments=True))


def parse_doc(path: Path, root: Path = REPO_ROOT) -> list[Block]:
    """The fenced blocks of one Markdown file; a fence without a language is a ``ValueError``."""
    doc = str(path.relative_to(root))
    blocks: list[Block] = []
    section, fence, body = "", None, []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = FENCE.match(line)
        if fence is None:
            if match:
                if not match["lang"]:
                    raise ValueError(
                        f"{doc}:{number}: a code fence without a language; mark commands "
                        "```bash and output ```text"
                    )
                fence, body = (number, match["lang"], len(match["indent"])), []
            elif heading := HEADING.match(line):
                section = heading["title"]
            continue
        if match and not match["lang"]:
            start, lang, indent = fence
            text = "\n".join(row[indent:] if row[:indent].isspace() else row for row in body)
            blocks.append(Block(doc=doc, section=section, lang=lang, line=start, text=text))
            fence = None
        else:
            body.append(line)
    if fence is not None:
        raise ValueError(f"{doc}:{fence[0]}: a code fence that is never closed")
    return blocks


def all_blocks() -> list[Block]:
    return [block for path in doc_files() for block in parse_doc(path)]
