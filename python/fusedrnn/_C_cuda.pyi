"""
fusedrnn CUDA kernels on raw device pointers (use fusedrnn.cuda / fusedrnn.functional)
"""
from __future__ import annotations
import typing
__all__: list[str] = ['backward_workspace_size', 'device_summary', 'forward_workspace_size', 'persistent_backward_fits', 'persistent_forward_fits', 'recurrent_backward', 'recurrent_forward']
def backward_workspace_size(cell: str, nonlinearity: str, T: typing.SupportsInt | typing.SupportsIndex, N: typing.SupportsInt | typing.SupportsIndex, I: typing.SupportsInt | typing.SupportsIndex, H: typing.SupportsInt | typing.SupportsIndex, bf16: bool = False, P: typing.SupportsInt | typing.SupportsIndex = 0) -> int:
    """
    Backward workspace in elements of the dtype (float32 with bf16).
    """
def device_summary() -> str:
    """
    Name, compute capability and SMs of the device.
    """
def forward_workspace_size(cell: str, nonlinearity: str, T: typing.SupportsInt | typing.SupportsIndex, N: typing.SupportsInt | typing.SupportsIndex, I: typing.SupportsInt | typing.SupportsIndex, H: typing.SupportsInt | typing.SupportsIndex, training: bool, bf16: bool = False, P: typing.SupportsInt | typing.SupportsIndex = 0) -> int:
    """
    Forward workspace in elements of the dtype (float32 with bf16).
    """
def persistent_backward_fits(cell: str, nonlinearity: str, dtype: str, T: typing.SupportsInt | typing.SupportsIndex, N: typing.SupportsInt | typing.SupportsIndex, I: typing.SupportsInt | typing.SupportsIndex, H: typing.SupportsInt | typing.SupportsIndex, bf16: bool = False) -> bool:
    """
    Can the persistent backward kernel run this problem on the current device?
    """
def persistent_forward_fits(cell: str, nonlinearity: str, dtype: str, T: typing.SupportsInt | typing.SupportsIndex, N: typing.SupportsInt | typing.SupportsIndex, I: typing.SupportsInt | typing.SupportsIndex, H: typing.SupportsInt | typing.SupportsIndex, bf16: bool = False) -> bool:
    """
    Can the persistent forward kernel run this problem on the current device?
    """
def recurrent_backward(cell: str, nonlinearity: str, dtype: str, T: typing.SupportsInt | typing.SupportsIndex, N: typing.SupportsInt | typing.SupportsIndex, I: typing.SupportsInt | typing.SupportsIndex, H: typing.SupportsInt | typing.SupportsIndex, pointers: tuple, reverse: bool, device: typing.SupportsInt | typing.SupportsIndex, stream: typing.SupportsInt | typing.SupportsIndex, allow_tf32: bool, algorithm: typing.SupportsInt | typing.SupportsIndex, bf16: bool = False, P: typing.SupportsInt | typing.SupportsIndex = 0) -> None:
    """
    BPTT of recurrent_forward on device pointers (see fusedrnn.cuda).
    """
def recurrent_forward(cell: str, nonlinearity: str, dtype: str, T: typing.SupportsInt | typing.SupportsIndex, N: typing.SupportsInt | typing.SupportsIndex, I: typing.SupportsInt | typing.SupportsIndex, H: typing.SupportsInt | typing.SupportsIndex, pointers: tuple, reverse: bool, device: typing.SupportsInt | typing.SupportsIndex, stream: typing.SupportsInt | typing.SupportsIndex, allow_tf32: bool, algorithm: typing.SupportsInt | typing.SupportsIndex, bf16: bool = False, P: typing.SupportsInt | typing.SupportsIndex = 0, ln_eps: typing.SupportsFloat | typing.SupportsIndex = 1e-05) -> None:
    """
    One layer, one direction, on device pointers (see fusedrnn.cuda).
    """
