"""Derainers and denoisers, one module per method; importing the package registers every method
with :mod:`models.registry`."""
from models import ddn, did_mdn, did_mdn_train, dncnn, gmm, identity, jorder, prenet, resguidenet_zoo  # noqa: F401
