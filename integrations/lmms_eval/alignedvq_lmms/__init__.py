"""lmms-eval plug-in for the alignedvq edge/cloud split (docs/lmms_eval.md)."""

MODEL_ID = "alignedvq"


def model_manifests():
    """The ``lmms_eval.models`` entry point: called by lmms-eval when it builds its model
    registry. Imported lazily so that installing the plug-in costs lmms-eval nothing until
    ``--model alignedvq`` is asked for."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID,
                          simple_class_path="alignedvq_lmms.model.AlignedVQSplit")]
