"""The analyst SQL sandbox: hostile statements against the running stack, and the guard's rules.

Every hostile statement must come back as a 4xx problem+json naming the rule that refused
it; a canary file must keep its content and mtime and never show up in a response; a
local HTTP server must receive no request (no SSRF); INTO OUTFILE must create nothing.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from sink.routes import refusal_status
from store import sql_guard
from store.clickhouse import ClickHouseStore
from store.sql_guard import Refused
from tests.support.readme import readme_queries


# --- canaries -----------------------------------------------------------------------------------
class Canaries:
    def __init__(self, root: Path, port: int, requests: list[str]) -> None:
        self.secret = f"canary-{uuid.uuid4().hex}"
        self.file = root / "canary.txt"
        self.file.write_text(f"{self.secret}\n")
        self.keys = root / "keys.env"
        self.keys.write_text(f'{{"acme": "sk-{self.secret}"}}\n')
        os.utime(self.file, (1_700_000_000, 1_700_000_000))
        os.utime(self.keys, (1_700_000_000, 1_700_000_000))
        self.fresh = root / "fresh.txt"  # INTO OUTFILE ... AND STDOUT must not create it
        self.port = port
        self.requests = requests

    def untouched(self) -> None:
        for path, content in ((self.file, f"{self.secret}\n"), (self.keys, f'{{"acme": "sk-{self.secret}"}}\n')):
            assert path.read_text() == content, f"{path} was written"
            assert path.stat().st_mtime == 1_700_000_000, f"{path} was modified"
        assert not self.fresh.exists(), "INTO OUTFILE created a file"
        assert self.requests == [], f"the SQL endpoint sent HTTP requests: {self.requests}"


@pytest.fixture(scope="module")
def canaries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Canaries]:
    requests: list[str] = []
    secret_holder: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            requests.append(f"GET {self.path}")
            body = f'{{"leaked": "{secret_holder[0]}"}}\n'.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_POST = do_PUT = do_GET  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    found = Canaries(tmp_path_factory.mktemp("canary"), server.server_address[1], requests)
    secret_holder.append(found.secret)
    yield found
    server.shutdown()
    server.server_close()


def hostile(c: Canaries) -> list[tuple[str, int, str]]:
    """(statement, status, words the refusal's detail must contain)."""
    f, k, url = c.file, c.keys, f"http://127.0.0.1:{c.port}"
    tf = "table function 'file'"
    return [
        # writes to the host
        (f"SELECT 'x' INTO OUTFILE '{f}' TRUNCATE", 400, "INTO OUTFILE"),
        (f"SELECT 'x' INTO OUTFILE '{f}' APPEND", 400, "INTO OUTFILE"),
        (f"SELECT 'x' INTO OUTFILE '{c.fresh}' AND STDOUT", 400, "INTO OUTFILE"),
        (f"SELECT * FROM jobs INTO OUTFILE '{c.fresh}' COMPRESSION 'gzip'", 400, "INTO OUTFILE"),
        (f"SHOW TABLES INTO OUTFILE '{c.fresh}'", 400, "INTO OUTFILE"),
        (f"EXPLAIN SELECT 1 INTO OUTFILE '{c.fresh}'", 400, "INTO OUTFILE"),
        # reads of the host, and requests from it
        (f"DESCRIBE file('{k}', 'JSONEachRow')", 400, tf),
        ("DESCRIBE file('/etc/passwd', 'TSVWithNames')", 400, tf),
        (f"SELECT * FROM file('{f}', 'LineAsString')", 400, tf),
        (f"SELECT file('{f}')", 400, "function 'file'"),
        (f"DESCRIBE url('{url}/leak', 'JSONEachRow')", 400, "table function 'url'"),
        (f"SELECT * FROM url('{url}/x', 'LineAsString')", 400, "table function 'url'"),
        (f"DESCRIBE s3('{url}/bucket/key.json', 'JSONEachRow')", 400, "table function 's3'"),
        (f"SELECT * FROM remote('127.0.0.1:{c.port}', system.one)", 400, "table function 'remote'"),
        (f"SELECT * FROM mysql('127.0.0.1:{c.port}', 'db', 't', 'u', 'p')", 400, "table function 'mysql'"),
        ("SELECT * FROM executable('cat /etc/passwd', 'TSV', 'line String')", 400, "table function 'executable'"),
        ("SELECT * FROM input('line String')", 400, "table function 'input'"),
        ("SELECT * FROM merge('system', '.*')", 400, "table function 'merge'"),
        (f"SELECT * FROM view(SELECT * FROM file('{f}', 'LineAsString'))", 400, "table function 'view'"),
        ("SELECT dictGet('some_dict', 'value', toUInt64(1))", 400, "function 'dictGet'"),
        # privileged and writing statements
        ("KILL QUERY WHERE query ILIKE '%INSERT%' ASYNC", 403, "KILL"),
        ("SYSTEM FLUSH LOGS", 403, "SYSTEM"),
        ("SET readonly = 0", 403, "SET"),
        ("USE system", 403, "USE"),
        ("INSERT INTO job_events (tenant, job_id) VALUES ('x', 'y')", 403, "INSERT"),
        ("CREATE TABLE evil (a UInt8) ENGINE = Memory", 403, "CREATE"),
        ("DROP TABLE job_results", 403, "DROP"),
        ("ALTER TABLE job_events DELETE WHERE 1", 403, "ALTER"),
        ("TRUNCATE TABLE job_events", 403, "TRUNCATE"),
        ("SHOW PROCESSLIST", 403, "SHOW PROCESSLIST"),
        # clauses the caller may not bring
        ("SELECT 1; SELECT 2", 400, "one statement"),
        (f"SELECT 1; SELECT 'x' INTO OUTFILE '{f}' TRUNCATE", 400, "one statement"),
        ("SELECT 1 FORMAT JSON", 400, "FORMAT"),
        ("SELECT count() FROM job_events SETTINGS readonly = 0", 400, "SETTINGS"),
        ("SELECT count() FROM job_events SETTINGS max_result_rows = 0", 400, "SETTINGS"),
        ("SELECT * FROM (SELECT 1 SETTINGS max_threads = 1)", 400, "SETTINGS"),
        # case and comment tricks, table functions hidden in the tree
        (f"sElEcT * fRoM FiLe('{f}', 'LineAsString')", 400, "table function 'FiLe'"),
        (f"SELECT /* hi */ * FROM /* x */ file('{f}', 'LineAsString') -- tail", 400, tf),
        (f"SELECT 1 -- ; DROP TABLE jobs\nUNION ALL SELECT * FROM file('{f}', 'LineAsString')", 400, tf),
        (f"SELECT * FROM (SELECT * FROM (SELECT * FROM file('{f}', 'LineAsString')))", 400, tf),
        (f"SELECT * FROM jobs AS j JOIN file('{f}', 'LineAsString') AS x ON 1", 400, tf),
        (f"SELECT 1 WHERE 'a' IN (SELECT line FROM file('{f}', 'LineAsString'))", 400, tf),
        (f"WITH leaked AS (SELECT * FROM file('{f}', 'LineAsString')) SELECT * FROM leaked", 400, tf),
        (f"SELECT 'a' UNION ALL SELECT * FROM file('{f}', 'LineAsString')", 400, tf),
        (f"SELECT (SELECT any(line) FROM file('{f}', 'LineAsString'))", 400, tf),
        (f"EXPLAIN SELECT * FROM file('{f}', 'LineAsString')", 400, tf),
        (f"DESCRIBE (SELECT * FROM file('{f}', 'LineAsString'))", 400, tf),
        # other databases
        ("SELECT * FROM system.processes", 400, "database 'system'"),
        ("SELECT name FROM system.users", 400, "database 'system'"),
        ("SELECT 'default' IN system.users", 400, "database 'system'"),
        ("SHOW TABLES FROM system", 400, "database 'system'"),
        ("SHOW CREATE TABLE system.users", 400, "database 'system'"),
        ("DESCRIBE TABLE INFORMATION_SCHEMA.TABLES", 400, "database 'INFORMATION_SCHEMA'"),
    ]


ALLOWED = [
    "SELECT number FROM numbers(3)",
    "WITH t AS (SELECT 1 AS a) SELECT a FROM t UNION ALL SELECT 2",
    "SELECT j.job_id FROM jobs AS j JOIN job_outcomes AS o USING (tenant, job_id) "
    "WHERE j.job_id IN (SELECT job_id FROM job_results) LIMIT 1",
    "SELECT * FROM replay_diff(tenant = 'nobody', replay_id = 'none')",
    "SELECT count() FROM default.job_events",
    "sElEcT /* a comment */ count() FROM jobs -- and another",
    "DESCRIBE TABLE jobs",
    "SHOW TABLES",
    "SHOW CREATE TABLE job_events",
    "EXPLAIN SELECT count() FROM job_events",
    "SELECT count() FROM job_results FINAL",
]


# --- over HTTP, against the running stack -------------------------------------------------------
@pytest.mark.kafka
def test_hostile_statements_are_refused_naming_the_rule(client: httpx.Client, canaries: Canaries):
    for sql, status, rule in hostile(canaries):
        answer = client.post("/v1/sql", json={"sql": sql})
        assert answer.status_code == status, (sql, answer.status_code, answer.text)
        assert answer.headers["content-type"] == "application/problem+json", sql
        assert rule.lower() in answer.json()["detail"].lower(), (sql, answer.json())
        assert answer.json()["rule"], sql
        assert canaries.secret not in answer.text, f"{sql} leaked the canary: {answer.text}"
        assert "root:" not in answer.text, f"{sql} leaked /etc/passwd"
    canaries.untouched()


@pytest.mark.kafka
def test_kill_query_is_refused_before_it_can_cancel_the_sinks_inserts(client: httpx.Client):
    answer = client.post("/v1/sql", json={"sql": "KILL QUERY WHERE 1 SYNC"})
    assert answer.status_code == 403 and answer.json()["rule"] == "statement"


@pytest.mark.kafka
def test_safe_statements_still_run(client: httpx.Client):
    for sql in ALLOWED:
        answer = client.post("/v1/sql", json={"sql": sql})
        assert answer.status_code == 200, (sql, answer.text)
    numbers = client.post("/v1/sql", json={"sql": "SELECT number FROM numbers(3)"}).json()
    assert numbers["rows"] == [[0], [1], [2]]


@pytest.mark.kafka
def test_readme_examples_pass_the_guard_over_http(client: httpx.Client):
    for sql in readme_queries():
        answer = client.post("/v1/sql", json={"sql": sql})
        assert answer.status_code == 200, (sql, answer.text)


# --- the guard on the session's ClickHouse (parser included, nothing runs) ----------------------
def test_the_guard_refuses_every_hostile_statement_before_clickhouse_runs_it(
    store: ClickHouseStore, canaries: Canaries
):
    for sql, status, rule in hostile(canaries):
        with pytest.raises(Refused) as refused:
            store.vet_sql(sql)
        assert refusal_status(refused.value) == status, (sql, refused.value)
        assert rule.lower() in str(refused.value).lower(), (sql, str(refused.value))
        assert canaries.secret not in str(refused.value)
    canaries.untouched()


def test_the_guard_lets_safe_statements_and_the_readme_examples_through(store: ClickHouseStore):
    for sql in [*ALLOWED, *readme_queries()]:
        store.vet_sql(sql)


def test_what_runs_is_what_was_checked(store: ClickHouseStore):
    """The statement that runs is ClickHouse's own formatting of the checked tree: comments are gone."""
    checked = store.vet_sql("SELECT 1 AS one -- ; DROP TABLE jobs")
    assert "DROP" not in checked and "--" not in checked


# --- pure unit tests of the rules (hand-written EXPLAIN AST dumps) ------------------------------
def tree(dump: str) -> sql_guard.Node:
    return sql_guard.parse_tree(dump.strip("\n").split("\n"))


SELECT_FILE = """
SelectWithUnionQuery (children 1)
 ExpressionList (children 1)
  SelectQuery (children 2)
   ExpressionList (children 1)
    Asterisk
   TablesInSelectQuery (children 1)
    TablesInSelectQueryElement (children 1)
     TableExpression (children 1)
      Function file (alias f) (children 1)
       ExpressionList (children 1)
        Literal \\'x\\'
"""


def test_check_names_the_table_function():
    refusal = sql_guard.check(tree(SELECT_FILE), database="default")
    assert refusal is not None and refusal.rule == "table_function" and "'file'" in refusal.detail
    numbers = SELECT_FILE.replace("Function file (alias f)", "Function numbers")
    assert sql_guard.check(tree(numbers), database="default") is None


def test_check_allows_our_parameterised_views_only_as_tables_of_ours():
    view = SELECT_FILE.replace("Function file (alias f)", "Function replay_diff")
    assert sql_guard.check(tree(view), database="default", views=frozenset({"replay_diff"})) is None
    assert sql_guard.check(tree(view), database="default").rule == "table_function"


def test_check_refuses_statement_kinds_with_403():
    for dump, word in (
        ("KillQueryQuery Literal_UInt64_1 ASYNC (children 1)\n Literal UInt64_1", "KILL"),
        ("SYSTEM query", "SYSTEM"),
        ("Set", "SET"),
        ("UseQuery system (children 1)\n Identifier system", "USE"),
    ):
        refusal = sql_guard.check(tree(dump), database="default")
        assert refusal is not None and refusal_status(Refused(refusal)) == 403 and word in refusal.detail


def test_check_refuses_output_clauses():
    outfile = (
        "SelectWithUnionQuery (children 2)\n ExpressionList (children 1)\n  SelectQuery (children 1)\n"
        "   ExpressionList (children 1)\n    Literal UInt64_1\n Literal \\'/tmp/x\\'"
    )
    assert sql_guard.check(tree(outfile), database="default").rule == "into_outfile"
    fmt = outfile.replace("Literal \\'/tmp/x\\'", "Identifier JSON")
    assert sql_guard.check(tree(fmt), database="default").rule == "format"


def test_a_dump_split_by_a_line_break_in_a_name_is_refused():
    """An identifier with a line break could forge tree lines; the child counts no longer add up."""
    forged = (
        "SelectWithUnionQuery (children 1)\n ExpressionList (children 1)\n  SelectQuery (children 1)\n"
        "   ExpressionList (children 1)\n    Identifier a\n    Function numbers (children 1)\n"
        "     ExpressionList (children 1)\n      Literal UInt64_1"
    )
    refusal = sql_guard.check(tree(forged), database="default")
    assert refusal is not None and refusal.rule == "unparsable"


def test_check_refuses_other_databases_but_not_ours():
    own = "DescribeQuery (children 1)\n TableExpression (children 1)\n  TableIdentifier jobstream.jobs"
    assert sql_guard.check(tree(own), database="jobstream") is None
    assert sql_guard.check(tree(own), database="default").rule == "database"
