"""PyTorch and safetensors interop: state_dicts in and out, with an explicit, printable name map.

    rows = name_map(models.lenet5(), (-1, 32, 32, 1))     # torch name <-> jaxconv path, per tensor
    print(format_name_map(rows))
    params, state = from_torch(torch_model.state_dict(), rows)
    torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in to_torch(params, rows).items()})
    save_safetensors("lenet5.safetensors", params, rows)  # PyTorch names: safetensors.torch.load_file works

Layouts (PyTorch -> jaxconv; the reverse is the inverse permutation):
- Conv2d weight (n_C', n_C/groups, f_H, f_W) OIHW -> HWIO (f_H, f_W, n_C/groups, n_C'): `permute(2, 3, 1, 0)`.
- ConvTranspose2d weight (n_C, n_C'/groups, f_H, f_W) -> (f_H, f_W, n_C'/groups, n_C): the same
  permutation (jaxconv's conv_transpose2d takes the HWIO filter of the conv2d it transposes).
- Conv1d/Conv3d and ConvTranspose1d/3d alike, per spatial rank: OIW -> WIO `permute(2, 1, 0)`,
  OIDHW -> DHWIO `permute(2, 3, 4, 1, 0)`.
- Linear weight (n_out, n_in) -> (n_in, n_out). The first Linear after a flatten of an
  (n_C, n_H, n_W) activation also reorders its inputs: PyTorch flattens NCHW (index c·n_H·n_W +
  h·n_W + w), jaxconv flattens NHWC (index h·n_W·n_C + w·n_C + c); likewise NCDHW vs NDHWC. The
  name map reads (*spatial, n_C) off the activation shapes the model's layers predict (those
  `jaxconv.summary` prints).
- BatchNorm1d/2d/3d weight, bias -> params gamma, beta; running_mean, running_var -> state mean, var.
  num_batches_tracked is dropped on import and written on export as `num_batches_tracked`
  (an int64 scalar, 0 unless given).
- GroupNorm, LayerNorm, InstanceNorm1d/2d/3d weight, bias -> params gamma, beta (recognised by the
  layer's kind); a LayerNorm over whole examples, PyTorch's weight (n_C, *spatial) -> (*spatial, n_C).
  InstanceNorm's tracked running_mean, running_var -> state mean, var (also without affine params).
- Biases are copied.

Every conversion is a permutation or a copy, so PyTorch -> jaxconv -> PyTorch gives bit-identical
tensors. A state_dict may hold torch tensors or NumPy arrays; torch is never imported here unless
asked for (`to_torch(..., tensors=True)`). safetensors files hold no pickle; they are written
atomically (temporary file, fsync, rename).
"""

from jaxconv.interop.names import CONVERSIONS, NameMap, NameRow, format_name_map, lenet5_name_map, name_map
from jaxconv.interop.safetensors_io import load_safetensors, save_safetensors
from jaxconv.interop.state_dict import batchnorm_from_torch, batchnorm_to_torch, from_torch, to_torch

__all__ = [
    "CONVERSIONS",
    "NameMap",
    "NameRow",
    "batchnorm_from_torch",
    "batchnorm_to_torch",
    "format_name_map",
    "from_torch",
    "lenet5_name_map",
    "load_safetensors",
    "name_map",
    "save_safetensors",
    "to_torch",
]
