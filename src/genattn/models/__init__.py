"""Detection models: the ResNet backbone with per-stage wiring, Faster R-CNN + FPN, the model zoo.

``get_model(name, weights=...)`` builds one of the seed's models (see :mod:`genattn.models.zoo`);
``convert.convert_mmdet_checkpoint`` maps MMDetection checkpoints onto it.
"""

from genattn.models.detector import FPN, FasterRCNN
from genattn.models.zoo import MODELS, ModelInfo, get_model, list_models, load_weights

__all__ = ["FPN", "FasterRCNN", "MODELS", "ModelInfo", "get_model", "list_models", "load_weights"]
