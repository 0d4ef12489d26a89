"""The one place that reaches into MLflow's private API (MLflow 3.17).

Each function says which public API is missing. tests/test_internals.py checks every one on a
real store, so that an MLflow upgrade that changes one fails there, naming this module, instead
of leaving the tool silently slower or quieter than it should be.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# Loggers of MLflow's own modules, quieted while a store fails (store.quiet_http_logs): the async
# queue's `Failed to log run data` errors and the SQL store's tracebacks. MLflow offers no
# setting for them; the names are its module paths.
ASYNC_QUEUE_LOGGER = "mlflow.utils.async_logging.async_logging_queue"
STORE_ERROR_LOGGER = "mlflow.store.db.utils"


def tracking_store(client: MlflowClient):
    """The store behind `client`. Missing publicly: MlflowClient exposes only its URI; the
    global `mlflow.*` functions reach the store of the process-wide tracking URI, not this one."""
    return client._tracking_client.store


def shut_down_async_logging(client: MlflowClient) -> None:
    """Write what the client's asynchronous queue still holds and stop its threads. Missing
    publicly: `mlflow.flush_async_logging()` acts on the process-wide store and restarts the
    threads; MlflowClient has no call for it."""
    tracking_store(client).shut_down_async_logging()


def end_run_at_once(client: MlflowClient, run_id: str, status: str) -> None:
    """End a run with `status` and the current time without stopping the asynchronous queue.
    Missing publicly: `MlflowClient.set_terminated` shuts the whole queue down first (~0.8 s a
    run), and `MlflowClient.update_run` leaves the end time unset."""
    from mlflow.entities import RunStatus

    tracking_store(client).update_run_info(
        run_id,
        run_status=RunStatus.from_string(status),
        end_time=time.time_ns() // 1_000_000,  # milliseconds, as MLflow records them
        run_name=None,
    )


# The tracking server's bulk metric-history endpoint (the UI's, under /ajax-api: MlflowClient has
# no call for it) and the most values it returns a request.
HISTORY_BULK_ENDPOINT = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
SERVER_HISTORY_LIMIT = 25_000


def metric_history_bulk(client: MlflowClient, run_ids: list[str], key: str, max_results: int):
    """Every logged value of `key` for up to 100 runs in one query or request (objects with
    `run_id`, `step` and `value`), or None when the store cannot, or when `max_results` (or a
    server's 25,000) values came back and some may be missing. Missing publicly:
    `MlflowClient.get_metric_history` reads one run per request."""
    store = tracking_store(client)
    if hasattr(store, "get_metric_history_bulk"):
        found = store.get_metric_history_bulk(run_ids, key, max_results=max_results)
        return None if len(found) >= max_results else found
    if not hasattr(store, "get_host_creds"):
        return None
    return server_history_bulk(store, run_ids, key, min(max_results, SERVER_HISTORY_LIMIT))


def server_history_bulk(store, run_ids: list[str], key: str, limit: int):
    """`get-history-bulk` of a tracking server; None where the server has no such endpoint
    (an older server, or one serving artifacts only)."""
    from types import SimpleNamespace

    from mlflow.utils.rest_utils import http_request, verify_rest_response

    params = {"run_id": run_ids, "metric_key": key, "max_results": limit}
    response = http_request(store.get_host_creds(), HISTORY_BULK_ENDPOINT, "GET", params=params)
    if response.status_code in (404, 405):
        return None
    values = verify_rest_response(response, HISTORY_BULK_ENDPOINT).json().get("metrics", [])
    if len(values) >= limit:
        return None
    return [
        SimpleNamespace(run_id=m["run_id"], step=int(m.get("step", 0)), value=float(m["value"]))
        for m in values
    ]


def runs_bulk(
    client: MlflowClient,
    experiment_ids: list[str],
    tag: tuple[str, str] | None = None,
    status: str | None = None,
) -> list[dict] | None:
    """Every active run of the experiments as plain values (run_id, experiment_id, name, status,
    start_time, end_time, tags, params, metrics: each latest value), oldest first as
    `search_runs(order_by=["attributes.start_time ASC"])` orders them; only those with tag
    `tag` = (key, value) and status `status` where given; None when the store is not a database
    (a tracking server). Missing publicly: `search_runs` builds an ORM object per tag, param and
    metric row (~200,000 for 1,000 experiment runs, most of the report's reading), and for a tag
    filter adds its joins and ordering to the one indexed lookup (sweep resume's); this reads the
    same rows as four plain SELECTs."""
    from sqlalchemy import select

    store = tracking_store(client)
    if not hasattr(store, "ManagedSessionMaker"):
        return None
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlParam, SqlRun, SqlTag

    ids = [int(e) for e in experiment_ids]
    where = [SqlRun.experiment_id.in_(ids), SqlRun.lifecycle_stage == "active"]
    if status is not None:
        where.append(SqlRun.status == status)
    if tag is not None:
        tagged = select(SqlTag.run_uuid).where(SqlTag.key == tag[0], SqlTag.value == tag[1])
        where.append(SqlRun.run_uuid.in_(tagged))
    columns = (SqlRun.run_uuid, SqlRun.experiment_id, SqlRun.name, SqlRun.status)
    columns += (SqlRun.start_time, SqlRun.end_time)
    runs: dict[str, dict] = {}
    with store.ManagedSessionMaker() as session:
        for run_id, experiment, name, run_status, start, end in session.execute(
            select(*columns).where(*where)
        ):
            runs[run_id] = {"run_id": run_id, "experiment_id": str(experiment), "name": name}
            runs[run_id] |= {"status": run_status, "start_time": start, "end_time": end}
            runs[run_id] |= {"tags": {}, "params": {}, "metrics": {}}
        # a filter's few runs by their ids (the filter is not run again); all of them by the query
        chosen = list(runs) if tag is not None else select(SqlRun.run_uuid).where(*where)
        for table, kind in ((SqlTag, "tags"), (SqlParam, "params")):
            query = select(table.run_uuid, table.key, table.value)
            for run_id, key, value in session.execute(query.where(table.run_uuid.in_(chosen))):
                runs[run_id][kind][key] = value
        m = SqlLatestMetric
        query = select(m.run_uuid, m.key, m.value, m.is_nan).where(m.run_uuid.in_(chosen))
        for run_id, key, value, is_nan in session.execute(query):
            runs[run_id]["metrics"][key] = float("nan") if is_nan else value
    for run in runs.values():  # as RunInfo names a run without one: from its mlflow.runName tag
        run["name"] = run["name"] or run["tags"].get("mlflow.runName", "")
    # search_runs' order: start time ascending, runs without one last, then the run id
    return sorted(runs.values(), key=lambda r: (r["start_time"] is None, r["start_time"] or 0,
                                                 r["run_id"]))  # fmt: skip
