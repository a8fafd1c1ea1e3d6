"""drift_report's metadata as a person reads it in the UI: the per-column table and the classifier's figures."""

import dagster as dg
import numpy as np

from mlops_assets.metadata import readable
from mlops_assets.monitoring import detector, domain_classifier


def number(value: float) -> float | None:
    return None if np.isnan(value) else readable({"v": float(value)})["v"]


def columns_table(result: detector.DriftResult) -> dg.MetadataValue:
    rows = [*result.columns, *([result.prediction] if result.prediction else [])]
    return dg.MetadataValue.table(
        records=[
            dg.TableRecord(
                {
                    "column": c.column,
                    "method": c.method,
                    "kind": c.kind,
                    "score": number(c.score),
                    "threshold": c.threshold,
                    "threshold_source": c.calibration.source if c.calibration else "fixed",
                    "natural_variation": number(c.calibration.natural) if c.calibration else None,
                    "derivation": c.calibration.derivation if c.calibration else "prediction_threshold",
                    "importance": number(c.importance) if c.importance is not None else None,
                    "drifted": c.drifted,
                    "counted": c.counted,
                }
            )
            for c in rows
        ],
        schema=dg.TableSchema(
            columns=[
                dg.TableColumn("column", "string"),
                dg.TableColumn("method", "string"),
                dg.TableColumn("kind", "string", description="p_value: drifts below threshold; distance: at or above"),
                dg.TableColumn("score", "float"),
                dg.TableColumn("threshold", "float"),
                dg.TableColumn("threshold_source", "string", description="calibrated, floor, override or fixed"),
                dg.TableColumn("natural_variation", "float", description="quantile of the reference blocks' scores"),
                dg.TableColumn("derivation", "string"),
                dg.TableColumn(
                    "importance", "float", description="share of the champion's sensitivity (mean |score change|)"
                ),
                dg.TableColumn("drifted", "bool"),
                dg.TableColumn("counted", "bool", description="drifted and important enough to mark the month"),
            ]
        ),
    )


def classifier_metadata(result: detector.DriftResult, threshold: float) -> dict:
    classifier = result.classifier
    if classifier is None:
        return {
            "classifier_drifted": False,
            "classifier_auc": dg.MetadataValue.null(),
            "classifier_threshold": threshold,
            "classifier_note": f"not run: a side has fewer than {domain_classifier.MIN_CLASSIFIER_ROWS} rows",
        }
    return {
        "classifier_drifted": classifier.drifted,
        "classifier_auc": classifier.auc,
        "classifier_threshold": classifier.threshold,
        "classifier_top_features": ", ".join(classifier.top()) or "none",
        "classifier_importances": dg.MetadataValue.md(
            "| column | held-out AUC lost when permuted |\n|---|---|\n"
            + "\n".join(f"| {c} | {v:.4f} |" for c, v in classifier.importances.items())
        ),
        "classifier_rows": f"{classifier.rows[0]} reference, {classifier.rows[1]} current",
    }
