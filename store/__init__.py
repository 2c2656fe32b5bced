"""The ClickHouse store: client, schema and migrations, the SQL guard, and the reads every service needs."""
