"""Pretrained in-house backbones as runs of a shared experiment, found again by `recipe_hash`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow.tracking import MlflowClient

from pipeline.config import BACKBONE_WEIGHTS_FILE
from pipeline.tracking.params import flatten
from pipeline.tracking.query import StoreReader
from pipeline.tracking.runs import create_run, end_run
from pipeline.tracking.writer import Writer

if TYPE_CHECKING:
    import keras


class MlflowWeightsStore:
    """A `pipeline.pretrain.WeightsStore` in MLflow: one `pretrain` run per recipe."""

    def __init__(self, client: MlflowClient, experiment_id: str):
        self.client = client
        self.experiment_id = experiment_id
        self.reader = StoreReader(client, [experiment_id])

    def load(self, recipe_hash: str, model: keras.Model) -> str | None:
        run = self.reader.finished_pretraining(recipe_hash)
        if run is None:
            return None
        with tempfile.TemporaryDirectory(prefix="transfer-lab-backbone-") as folder:
            model.load_weights(
                self.client.download_artifacts(run.run_id, BACKBONE_WEIGHTS_FILE, folder)
            )
        return run.run_id

    def save(self, recipe: dict, weights_file: Path, metrics: dict[str, float]) -> str:
        backbone = recipe["backbone"]
        tags = {"stage": "pretrain", "recipe_hash": recipe["hash"], "backbone": backbone["name"]}
        name = f"pretrain-{backbone['name']}-{recipe['hash']}"
        run_id = create_run(self.client, self.experiment_id, name, tags)
        writer = Writer(self.client, synchronous=True)
        try:
            flat = flatten({"backbone": backbone, "seed": recipe["seed"]})
            flat["input_shape"] = str(recipe["input_shape"])
            writer.final_metrics(run_id, metrics)
            writer.params(run_id, flat)
            writer.artifact(run_id, weights_file)
        except BaseException as error:
            end_run(writer, run_id, error)
            raise
        end_run(writer, run_id, None)
        return run_id
