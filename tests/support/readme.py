"""What the README promises, read from it: its example queries, run by the analytics and SQL tests."""

from __future__ import annotations

from tests.support import ROOT


def readme_queries() -> list[str]:
    """The SQL examples of the README's 'Querying results' section."""
    section = (ROOT / "README.md").read_text().split("## Querying results", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0] for b in section.split("```sql\n")[1:]]
    return [q.strip() for block in blocks for q in block.split(";") if q.strip().replace("-", "").strip()]
