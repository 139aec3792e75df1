"""Models by name. Each takes the input shape (channels, *spatial), the number of classes and the depth."""
from .simplecnn import SimpleCNN

MODELS = {"simplecnn": SimpleCNN}


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, depth: int):
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name](input_shape, num_classes, depth)
