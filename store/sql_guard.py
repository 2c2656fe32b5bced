"""What an analyst's SQL may do, decided before ClickHouse runs it.

ClickHouse's own parser reads the statement (``formatQuery`` of a bound value, then
``EXPLAIN AST`` of its canonical text; neither executes anything), so checker and engine never
read the same text differently; :func:`check` walks that tree against allow-lists. The
canonical text is what then runs. ClickHouse's ``readonly=1``, limits and a SELECT-only user
stay the second line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from streams.errors import JobstreamError

logger = logging.getLogger(__name__)

#: Table functions that only compute (no files, URLs, other databases or processes).
#: Anything else in a FROM/JOIN — file, url, s3, remote, mysql, executable, input, merge,
#: view, dictionary, … — is refused, as is a table function's name used as a function.
ALLOWED_TABLE_FUNCTIONS = frozenset(
    {
        "numbers",
        "numbers_mt",
        "zeros",
        "zeros_mt",
        "generate_series",
        "generateseries",
        "values",
    }
)

#: Functions (lower case) that read files, dictionaries, other tables or the host, or just wait.
REFUSED_FUNCTIONS = frozenset(
    {
        "file",
        "joinget",
        "joingetornull",
        "catboostevaluate",
        "modelevaluate",
        "naivebayesclassifier",
        "hascolumnintable",
        "generateserialid",
        "getclienthttpheader",
        "sleep",
        "sleepeachrow",
        "addresstoline",
        "addresstolinewithinlines",
        "addresstosymbol",
        "demangle",
        "filesystemavailable",
        "filesystemcapacity",
        "filesystemunreserved",
    }
)
#: Prefixes (lower case) of refused functions: every dictGet*/dictHas/…, and internal ``__`` ones.
REFUSED_FUNCTION_PREFIXES = ("dict", "__")

#: Databases no query may name (beyond these, any database but jobstream's own is refused in FROM).
FOREIGN_DATABASES = frozenset({"system", "information_schema"})

_IN_FUNCTIONS = frozenset(
    {"in", "notin", "globalin", "globalnotin", "nullin", "notnullin", "globalnullin", "globalnotnullin"}
)

#: Statements that may run, by the node ClickHouse's parser makes of them.
ALLOWED_STATEMENTS = "SELECT (WITH, JOIN, UNION, subqueries), DESCRIBE, SHOW TABLES, SHOW CREATE, EXISTS, EXPLAIN"

# What the refusal of a statement kind calls it.
_STATEMENT_NAMES = {
    "InsertQuery": "INSERT",
    "CreateQuery": "CREATE",
    "DropQuery": "DROP",
    "TruncateQuery": "TRUNCATE",
    "AlterQuery": "ALTER",
    "KillQueryQuery": "KILL",
    "SYSTEM": "SYSTEM",
    "Set": "SET",
    "UseQuery": "USE",
    "OptimizeQuery": "OPTIMIZE",
    "RenameQuery": "RENAME",
    "DeleteQuery": "DELETE",
    "UndropQuery": "UNDROP",
    "ShowProcesslistQuery": "SHOW PROCESSLIST",
    "ShowColumns": "SHOW COLUMNS",
    "WatchQuery": "WATCH",
    "CheckQuery": "CHECK",
    "BackupQuery": "BACKUP/RESTORE",
    "ShowDatabases": "SHOW DATABASES",
}

_SHOW_TARGETS = frozenset({"ShowCreateTableQuery", "ShowCreateViewQuery", "ExistsTableQuery"})


class Unparsable(JobstreamError, ValueError):
    """The EXPLAIN AST dump did not have the shape of one tree."""


@dataclass
class Node:
    """One line of ``EXPLAIN AST``: ``kind`` (first word), the rest of the line, and the children it claims."""

    kind: str
    text: str
    claimed: int
    children: list[Node] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The word after the kind (a function's, identifier's or table's name)."""
        parts = self.text.split(" ")
        return parts[1] if len(parts) > 1 else ""


@dataclass(frozen=True)
class Refusal:
    rule: str  #: which rule refused it (a stable word, also in the problem body); ``statement``: the kind of
    #: statement itself may not run here (it would write or act on the server)
    detail: str  #: one sentence for the caller, naming what was refused


class Refused(JobstreamError):
    """The statement may not run here; ``str()`` says why."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.detail)
        self.rule, self.detail = refusal.rule, refusal.detail


def parse_tree(lines: Sequence[str]) -> Node:
    """The tree of an ``EXPLAIN AST`` dump (one node per line, one space of indent per level)."""
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise Unparsable("empty dump")
    stack: list[Node] = []
    root: Node | None = None
    for line in lines:
        depth = len(line) - len(line.lstrip(" "))
        text = line.strip(" ")
        claimed = 0
        head, sep, tail = text.rpartition(" (children ")
        if sep and tail.endswith(")") and tail[:-1].isdigit():
            text, claimed = head, int(tail[:-1])
        node = Node(kind=text.split(" ", 1)[0], text=text, claimed=claimed)
        if depth == 0:
            if root is not None:
                raise Unparsable("more than one root")
            root = node
        elif depth > len(stack):
            raise Unparsable("indent skips a level")
        else:
            stack[depth - 1].children.append(node)
        del stack[depth:]
        stack.append(node)
    if root is None:
        raise Unparsable("no root")
    return root


def check(tree: Node, *, database: str, views: frozenset[str] = frozenset()) -> Refusal | None:
    """Allowed (``None``) or the rule that refuses the statement ``tree``.

    ``database`` is jobstream's (the only one a query may name); ``views`` are its views, which
    may be called like table functions (parameterised views such as ``replay_diff``).
    """
    if not _counts_add_up(tree):
        return Refusal("unparsable", "the statement could not be analysed (is there a line break in a name?)")
    body: list[Node]
    kind = tree.kind
    if kind == "SelectWithUnionQuery":
        body, output = tree.children[:1], tree.children[1:]
    elif kind == "DescribeQuery":
        body, output = tree.children[:1], tree.children[1:]
        if not body or body[0].kind != "TableExpression":
            return Refusal("unparsable", "DESCRIBE of something other than a table or a subquery")
    elif kind == "Explain":
        first = 1 if tree.children and tree.children[0].kind == "Set" else 0  # EXPLAIN's own options
        body, output = tree.children[first : first + 1], tree.children[first + 1 :]
        if not body or body[0].kind != "SelectWithUnionQuery":
            return Refusal("statement", f"only EXPLAIN of a SELECT may run here ({ALLOWED_STATEMENTS})")
    elif kind == "ShowTables":
        for child in tree.children:
            if child.kind == "Identifier":
                return Refusal(
                    "database",
                    f"SHOW TABLES lists this database only, with no clauses: database "
                    f"'{child.name}' (or FORMAT {child.name}) is not allowed",
                )
        body, output = [], tree.children
    elif kind in _SHOW_TARGETS:
        parts = tree.text.split(" ")
        if len(parts) != 3:
            return Refusal("unparsable", "the statement could not be analysed")
        db, _table = parts[1], parts[2]
        if db and db != database:
            return Refusal(
                "database", f"tables of database '{db}' are not allowed here, only this database's ('{database}')"
            )
        named = 2 if db else 1
        body, output = tree.children[:named], tree.children[named:]
    else:
        name = _STATEMENT_NAMES.get(kind, kind)
        return Refusal("statement", f"{name} statements may not run here; only {ALLOWED_STATEMENTS}")

    for clause in output:
        refusal = _output_clause(clause)
        if refusal:
            return refusal
    for node in body:
        refusal = _walk(node, None, database, views)
        if refusal:
            return refusal
    return None


def _counts_add_up(node: Node) -> bool:
    return len(node.children) == node.claimed and all(_counts_add_up(c) for c in node.children)


def _output_clause(node: Node) -> Refusal | None:
    if node.kind == "Literal":
        return Refusal("into_outfile", "INTO OUTFILE is not allowed: results come back in the answer")
    if node.kind == "Identifier":
        return Refusal("format", f"a FORMAT clause (FORMAT {node.name}) is not allowed: results come back as JSON")
    if node.kind == "Set":
        return Refusal("settings", "a SETTINGS clause is not allowed: the service sets the query's limits")
    return Refusal("unparsable", f"unexpected clause {node.kind!r}")


def _walk(node: Node, parent: Node | None, database: str, views: frozenset[str]) -> Refusal | None:
    refusal = _node(node, parent, database, views)
    if refusal:
        return refusal
    for child in node.children:
        refusal = _walk(child, node, database, views)
        if refusal:
            return refusal
    # x IN table / x IN table_function(…): the right side of IN names a table.
    if node.kind == "Function" and node.name.lower() in _IN_FUNCTIONS and node.children:
        args = node.children[0].children
        if len(args) == 2:
            right = args[1]
            if right.kind == "Function":
                return _table_function(right, views)
            if right.kind == "Identifier":
                return _table_name(right.name, database)
    return None


def _node(node: Node, parent: Node | None, database: str, views: frozenset[str]) -> Refusal | None:
    if node.kind == "Set":
        return Refusal("settings", "a SETTINGS clause is not allowed: the service sets the query's limits")
    if node.kind == "Function":
        if parent is not None and parent.kind == "TableExpression":
            return _table_function(node, views)
        lower = node.name.lower()
        if lower in REFUSED_FUNCTIONS or lower.startswith(REFUSED_FUNCTION_PREFIXES):
            return Refusal(
                "function",
                f"function '{node.name}' is not allowed: it reaches files, dictionaries, other tables or the host",
            )
    if node.kind == "TableIdentifier":
        return _table_name(node.name, database)
    if node.kind == "Identifier" and "." in node.name:
        first = node.name.split(".", 1)[0]
        if first.lower() in FOREIGN_DATABASES:
            return Refusal("database", f"database '{first}' is not allowed: only this database's tables ('{database}')")
    return None


def _table_function(node: Node, views: frozenset[str]) -> Refusal | None:
    if node.name.lower() in ALLOWED_TABLE_FUNCTIONS or node.name in views:
        return None
    return Refusal(
        "table_function",
        f"table function '{node.name}' is not allowed (allowed: "
        f"{', '.join(sorted(ALLOWED_TABLE_FUNCTIONS))}, and this database's "
        "parameterised views)",
    )


def _table_name(name: str, database: str) -> Refusal | None:
    if "." not in name:
        return None
    db = name.split(".", 1)[0]
    if db == database:
        return None
    return Refusal("database", f"database '{db}' is not allowed: only this database's tables ('{database}')")


# --- the parse step (ClickHouse's parser; runs nothing) --------------------------------------------
_SYNTAX_ERROR, _UNKNOWN_SETTING, _READONLY = 62, 115, 164


def vet(parser: Any, sql: str) -> str:
    """The canonical text of ``sql`` if it may run, else :class:`Refused`.

    ``parser`` is a clickhouse-connect client with no per-query settings (its raw queries go as
    they are), connected as the analyst and to jobstream's database.
    """
    from clickhouse_connect.driver.exceptions import DatabaseError

    try:
        canonical, database, views = parser.query(
            "SELECT formatQuery({sql:String}), currentDatabase(), (SELECT groupArray(name) FROM system.tables "
            "WHERE database = currentDatabase() AND engine = 'View')",
            parameters={"sql": sql},
        ).result_rows[0]
    except DatabaseError as exc:
        message = short_error(exc)
        if getattr(exc, "code", None) == _SYNTAX_ERROR and "Multi-statements" in str(exc):
            raise Refused(Refusal("one_statement", "only one statement may run per request")) from None
        if getattr(exc, "code", None) == _SYNTAX_ERROR:
            raise Refused(Refusal("syntax", message)) from None
        raise
    try:
        dump = parser.raw_query(f"EXPLAIN AST {canonical}").decode(errors="replace")
    except DatabaseError as exc:
        if getattr(exc, "code", None) in (_UNKNOWN_SETTING, _READONLY):  # EXPLAIN applies a SETTINGS clause
            raise Refused(
                Refusal("settings", "a SETTINGS clause is not allowed: the service sets the query's limits")
            ) from None
        raise Refused(Refusal("unparsable", f"the statement could not be analysed: {short_error(exc)}")) from None
    try:
        tree = parse_tree(dump.split("\n"))
    except Unparsable:
        raise Refused(
            Refusal("unparsable", "the statement could not be analysed (is there a line break in a name?)")
        ) from None
    refusal = check(tree, database=database, views=frozenset(views))
    if refusal:
        raise Refused(refusal)
    return canonical


def short_error(exc: BaseException, limit: int = 240) -> str:
    """ClickHouse's message cut to its first sentence-line, without the echoed query or file/URL bodies."""
    text = str(exc)
    lines = [line for line in text.splitlines() if "DB::" in line] or text.splitlines() or [""]
    line = lines[0]
    while "DB::Exception: " in line:
        line = line.split("DB::Exception: ", 1)[1]
    for cut in (" In scope ", ". Expected ", " (version "):
        line = line.split(cut, 1)[0]
    line = line.strip()
    return line if len(line) <= limit else line[: limit - 1] + "…"
