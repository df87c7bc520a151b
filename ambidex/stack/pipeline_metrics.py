"""The local stack's pipeline metrics: the JMX exporter agent in the broker's and the
Connect worker's JVMs (rules in ``deploy/monitoring/jmx/``, the same files Strimzi's
``metricsConfig`` ConfigMaps carry) and the pipeline exporter process
(:mod:`ambidex.pipeline_exporter`: replication slots and consumer-group lag).

Each answers on its own port on the stack's host (``StackConfig.kafka_metrics_port``,
``connect_metrics_port``, ``exporter_port``); ``metrics_endpoints`` lists them.
"""

from __future__ import annotations

import sys

from ambidex.stack.config import REPO_ROOT, StackConfig
from ambidex.stack.jars import ensure_jmx_agent
from ambidex.stack.processes import DetachedProcess, port_open, wait_for

JMX_RULES_DIR = REPO_ROOT / "deploy" / "monitoring" / "jmx"
EXPORTER = "pipeline-exporter"


def jmx_agent_options(config: StackConfig, component: str) -> list[str]:
    """``-javaagent`` for ``component`` (``kafka`` or ``connect``): its rule file, its port."""
    port = {"kafka": config.kafka_metrics_port, "connect": config.connect_metrics_port}[component]
    agent = ensure_jmx_agent(config.jars_dir)
    rules = JMX_RULES_DIR / f"{component}.yaml"
    return [f"-javaagent:{agent}={config.host}:{port}:{rules}"]


def metrics_endpoints(config: StackConfig) -> dict[str, str]:
    """Scrape job name -> /metrics URL of each pipeline exporter of the stack."""
    return {
        "kafka": f"http://{config.host}:{config.kafka_metrics_port}/metrics",
        "kafka-connect": f"http://{config.host}:{config.connect_metrics_port}/metrics",
        EXPORTER: f"http://{config.host}:{config.exporter_port}/metrics",
    }


async def start_pipeline_exporter(config: StackConfig, environment: dict[str, str]) -> None:
    """Start the pipeline exporter (left alone when it runs); ``environment`` gives it
    the databases (``AMBIDEX_CRM_DSN``/``AMBIDEX_ERP_DSN``) and Kafka."""
    process = DetachedProcess(EXPORTER, config)
    if process.pid() is None:
        process.spawn(
            [sys.executable, "-m", "ambidex.pipeline_exporter"],
            env={
                **environment,
                "AMBIDEX_METRICS_HOST": config.host,
                "AMBIDEX_METRICS_PORT": str(config.exporter_port),
            },
        )
    await wait_for(
        EXPORTER,
        lambda: port_open(config.host, config.exporter_port),
        timeout=60,
        log=process.log_file,
    )
