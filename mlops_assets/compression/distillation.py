"""student_model: a smaller model of the same family trained on the trained model's soft targets."""

import dagster as dg
import torch

from mlops_assets.compression.float_candidates import publish_float, skip, training_frames
from mlops_assets.metadata import readable
from mlops_assets.training import families
from mlops_assets.training.assets import parity_spec
from mlops_assets.training.families import Loaded
from mlops_assets.training.family import STUDENT
from mlops_assets.training.fit_loop import Distillation, FitSettings
from mlops_assets.training.values import Candidate, TrainedModel
from resources import ArtifactStore, MlflowRegistry


class DistillConfig(dg.Config):
    hidden: list[int] | None = None
    """Width of each hidden layer of the student; None: the teacher's widths times `width_fraction`."""
    width_fraction: float = 0.25
    """Student width as a share of the teacher's, layer by layer, when `hidden` is None."""
    epochs: int = 3
    learning_rate: float = 2e-3
    batch_size: int = 512
    temperature: float = 2.0
    """Divides the teacher's logits before the sigmoid; above 1 it softens the targets the student imitates."""
    distill_weight: float = 0.5
    """Share (0-1) of the loss that comes from the teacher's soft targets; the rest comes from the labels."""
    seed: int = 7


@dg.asset(group_name="compression", kinds={"pytorch", "onnx", "mlflow"}, check_specs=[parity_spec("student_model")])
def student_model(
    context: dg.AssetExecutionContext,
    config: DistillConfig,
    trained_model: TrainedModel,
    onnx_model: Candidate,
    store: ArtifactStore,
    registry: MlflowRegistry,
):
    """A smaller model trained on the trained model's soft targets plus the labels (knowledge distillation)."""
    family = families.family(trained_model.family)
    if STUDENT in family.unsupported:
        yield from skip(STUDENT, family.unsupported[STUDENT], family.name)
        return
    teacher = families.load_checkpoint(store.read_bytes(trained_model.checkpoint_key))
    prep = teacher.prep
    teacher_widths = family.widths(teacher.model)
    hidden = config.hidden or [max(4, round(w * config.width_fraction)) for w in teacher_widths]
    torch.manual_seed(config.seed)
    student = family.build(prep, tuple(hidden))
    student_size, teacher_size = family.parameter_count(student), family.parameter_count(teacher.model)
    if student_size >= teacher_size:
        raise dg.Failure(
            f"student hidden {hidden} has {student_size:,} parameters, not fewer than "
            f"the teacher's {teacher_size:,} (hidden {teacher_widths})"
        )
    train_frame, validation = training_frames(store, trained_model)
    distillation = Distillation(
        teacher_logits=family.logits(teacher.model, prep, train_frame),
        weight=config.distill_weight,
        temperature=config.temperature,
    )
    settings = FitSettings(config.epochs, config.batch_size, config.learning_rate, config.seed)
    result = family.fit(student, prep, train_frame, validation, settings, distillation)
    value, metadata, check = publish_float(
        STUDENT,
        Loaded(family, student, prep),
        trained_model=trained_model,
        baseline=onnx_model,
        params={**config.model_dump(), "hidden": str(hidden), "teacher_hidden": str(onnx_model.hidden)},
        history=result.history,
        store=store,
        registry=registry,
    )
    yield dg.Output(value, metadata=readable({**metadata, "best_epoch": result.best_epoch}))
    yield check
