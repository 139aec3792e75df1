"""Training methods by name. A method is one module with
``step(model, images, labels, config, autocast) -> loss``: it leaves the gradients of one
minibatch in ``.grad`` and returns the detached loss; the training loop does the rest."""
from . import bp, sid

METHODS = {"bp": bp, "sid": sid}
