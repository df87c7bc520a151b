"""Flink SQL reads a topic Ambidex published, in the registry wire format.

Runs under the Flink environment's Python (``bench/registry_flink.py`` starts it): only
PyFlink and the standard library here. The table's value format is ``avro-confluent``
(Flink's reader of Confluent's framing: magic byte, schema id, body, the writer schema
fetched from the registry by id); Flink's own reader schema is derived from the table's
columns, money as ``DECIMAL(18, 2)``. The source is bounded at the topic's end when the
job starts. Prints one JSON line per record (money as decimal text), then one line of
figures.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--registry", required=True, help="Confluent-compatible registry URL")
    parser.add_argument("--jars", required=True, help="';'-separated connector and format jars")
    args = parser.parse_args()

    from pyflink.common import Configuration
    from pyflink.table import EnvironmentSettings, TableEnvironment

    config = Configuration()
    config.set_string("pipeline.jars", ";".join(f"file://{j}" for j in args.jars.split(";")))
    config.set_string("parallelism.default", "1")
    env = TableEnvironment.create(
        EnvironmentSettings.new_instance().in_streaming_mode().with_configuration(config).build()
    )
    env.execute_sql(f"""
        CREATE TABLE positions (
            contract_id BIGINT NOT NULL,
            currency STRING NOT NULL,
            contracted DECIMAL(18, 2) NOT NULL,
            scheduled DECIMAL(18, 2) NOT NULL,
            invoiced DECIMAL(18, 2) NOT NULL,
            paid DECIMAL(18, 2) NOT NULL,
            outstanding DECIMAL(18, 2) NOT NULL,
            overdue DECIMAL(18, 2) NOT NULL,
            `offset` BIGINT METADATA VIRTUAL,
            `partition` INT METADATA VIRTUAL
        ) WITH (
            'connector' = 'kafka',
            'topic' = '{args.topic}',
            'properties.bootstrap.servers' = '{args.bootstrap}',
            'properties.group.id' = 'ambidex-bench-registry-flink-{int(time.time())}',
            'scan.startup.mode' = 'earliest-offset',
            'scan.bounded.mode' = 'latest-offset',
            'value.format' = 'avro-confluent',
            'value.avro-confluent.url' = '{args.registry}'
        )""")
    started = time.monotonic()
    rows = 0
    with env.execute_sql(
        "SELECT contract_id, currency, contracted, scheduled, invoiced, paid, outstanding, "
        "overdue, `partition`, `offset` FROM positions"
    ).collect() as results:
        for row in results:
            rows += 1
            print(json.dumps({
                "contract_id": row[0], "currency": row[1],
                **{name: str(value) for name, value in zip(
                    ("contracted", "scheduled", "invoiced", "paid", "outstanding", "overdue"),
                    row[2:8], strict=True)},
                "partition": row[8], "offset": row[9],
            }))
    print(json.dumps({"rows": rows, "seconds": round(time.monotonic() - started, 3)}))


if __name__ == "__main__":
    main()
