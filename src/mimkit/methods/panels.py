"""What MAE's and SimMIM's ``reconstruct`` hand to the reconstruction grid."""

from torch import Tensor


def reconstruction_panels(images: Tensor, recon: Tensor, mask: Tensor, loss: Tensor) -> dict[str, Tensor]:
    """``reconstruction`` (``recon`` [N, C, H, W]), ``masked`` (``images`` with the hidden pixels zeroed:
    ``mask`` [N, 1, H, W] = 1), ``pasted`` (``recon`` on the hidden pixels, ``images`` elsewhere), ``mask``
    and ``loss``."""
    visible = images * (1 - mask)
    return dict(reconstruction=recon, masked=visible, pasted=visible + recon * mask, mask=mask, loss=loss)
