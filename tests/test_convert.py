"""torchvision weights, converted, reproduce torchvision's logits.

Each test builds a torchvision model with random weights (nothing is
downloaded), gives its BatchNorm layers non-trivial statistics, converts its
state_dict and compares eval-mode logits on one random batch: NCHW into
torch, the same batch as NHWC into cnn_jax, within 1e-4 in float32. Inputs
are small and not square wherever the architecture allows, so that height
and width cannot be swapped unnoticed and the pooling edge cases (ceil
mode, odd sizes) are hit.

torch and torchvision come from the `reference` extra; CI installs it, and
there a missing torch fails the run instead of skipping these tests.
"""

import dataclasses
import functools
import importlib.util
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

if os.environ.get('CI'):
  import torch
  import torchvision
else:
  torch = pytest.importorskip('torch', reason='needs the reference extra')
  torchvision = pytest.importorskip('torchvision')

from torch import nn  # noqa: E402
from torch.nn import functional  # noqa: E402

from cnn_jax import config_lib, convert, models, train  # noqa: E402
from cnn_jax import data as data_lib  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
TOL = 1e-4
NUM_CLASSES = 10

# Model name, input (height, width). VGG's 64x96 leaves a 2x3 last map,
# which the converter pools into torchvision's 7x7 FC input; 224 checks
# the plain 7x7 flatten. GoogLeNet's odd sizes make its ceil-mode pools
# keep partial windows.
ARCHITECTURES = [
  *[(f'vgg{d}', (64, 96)) for d in (11, 13, 16, 19)],
  *[(f'vgg{d}_bn', (64, 96)) for d in (11, 13, 16, 19)],
  ('vgg11', (224, 224)),
  *[(f'resnet{d}', (67, 45)) for d in (18, 34, 50, 101, 152)],
  ('googlenet_tv', (75, 67)),
  ('googlenet_tv', (224, 224)),
]


@pytest.fixture(autouse=True, scope='module')
def one_torch_thread():
  # pytest-xdist runs one worker per core; torch's own pool would fight it.
  old = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(old)


def torchvision_model(name: str, **kwargs) -> nn.Module:
  torch.manual_seed(0)
  if name == 'googlenet_tv':
    kwargs.setdefault('init_weights', True)
    name = 'googlenet'
  return getattr(torchvision.models, name)(
    weights=None, num_classes=NUM_CLASSES, **kwargs
  )


def randomize(model: nn.Module, hw: tuple[int, int]) -> nn.Module:
  """Random BN affines and statistics, logits of order one; eval mode.

  The aim is a network whose float32 logits are far more precise than the
  1e-4 tolerance, so that only a real difference fails the test:
  - BatchNorm statistics come from a calibration batch; fresh ones (mean 0,
    variance 1) would let activations shrink or grow layer after layer.
  - Each BN before a ReLU gets a bias near +1. With biases near 0, every
    BN-ReLU layer amplifies float32 rounding errors about 1.2 times (the
    next BN removes the ReLU output's mean, not the error), and float32
    torch misses its own float64 GoogLeNet logits by 1e-4.
  - A residual branch ends in a BN scaled by 0.2 with a bias near 0, small
    beside the shortcut as in trained ResNets; with full-size branches
    float32 torch is 1e-3 off its float64 ResNet-152 logits.
  - The classifier is rescaled to unit logit spread; torchvision's init
    gives logits near 0.01.
  """
  gen = torch.Generator().manual_seed(1)
  uniform = lambda t, low, high: t.copy_(
    torch.rand(t.shape, generator=gen) * (high - low) + low
  )
  normal = lambda t, mean, std: t.copy_(
    torch.randn(t.shape, generator=gen) * std + mean
  )
  calibration = torch.randn(4, 3, *hw, generator=gen)
  norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
  with torch.no_grad():
    for bn in norms:
      uniform(bn.weight, 0.5, 1.5)
      normal(bn.bias, 1.0, 0.2)
      bn.reset_running_stats()
      bn.momentum = None  # cumulative average: one batch sets the stats
    for block in model.modules():
      if type(block).__name__ in ('BasicBlock', 'Bottleneck', 'CifarBlock'):
        children = block.children()
        [*_, last] = [m for m in children if isinstance(m, nn.BatchNorm2d)]
        uniform(last.weight, 0.1, 0.3)
        normal(last.bias, 0.0, 0.2)
    if norms:
      model.train()
      model(calibration)
    model.eval()
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    spread = model(calibration).std()
    classifier.weight /= spread
    classifier.bias /= spread
  return model


def torch_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(x)).numpy()


def cnn_jax_logits(model, variables, x_nchw: np.ndarray) -> np.ndarray:
  x = jnp.asarray(x_nchw.transpose(0, 2, 3, 1))  # NCHW -> NHWC
  return np.asarray(jax.jit(model.apply)(variables, x))


def random_batch(hw, batch=2, seed=2) -> np.ndarray:
  return (
    np.random.default_rng(seed).normal(size=(batch, 3, *hw)).astype(np.float32)
  )


def assert_logits_match(ours, ref):
  assert ours.shape == ref.shape
  # Not a vacuous comparison: the logits vary on the scale of the tolerance
  # many times over.
  assert ref.std() > 1000 * TOL
  np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL)


@pytest.mark.parametrize(
  'name,hw', ARCHITECTURES, ids=[f'{n}-{h}x{w}' for n, (h, w) in ARCHITECTURES]
)
def test_torchvision_logits_match(name, hw):
  reference = randomize(torchvision_model(name), hw)
  x = random_batch(hw)
  expected = torch_logits(reference, x)

  variables = convert.convert_state_dict(
    name, reference.state_dict(), image_size=hw
  )
  fields = {'aux_heads': True} if name == 'googlenet_tv' else {}
  model = models.create_model(name, NUM_CLASSES, **fields)
  got = cnn_jax_logits(model, variables, x)

  print(f'{name} {hw}: max |logit diff| {np.abs(got - expected).max():.2e}')
  assert_logits_match(got, expected)


def test_nchw_batch_is_refused_with_a_hint():
  reference = randomize(torchvision_model('resnet18'), (64, 64))
  variables = convert.convert_state_dict('resnet18', reference.state_dict())
  model = models.create_model('resnet18', NUM_CLASSES)
  with pytest.raises(ValueError, match='NCHW'):
    model.apply(variables, jnp.asarray(random_batch((64, 64))))


# ---------------------------------------------------- CIFAR ResNet-20


class CifarBlock(nn.Module):
  """He et al. 2016's CIFAR block, option A: subsample, zeros appended."""

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.stride, self.extra = stride, cout - cin
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)

  def forward(self, x):
    y = functional.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    shortcut = x[:, :, :: self.stride, :: self.stride]
    return functional.relu(
      y + functional.pad(shortcut, (0, 0, 0, 0, 0, self.extra))
    )


class CifarResNet(nn.Module):
  """3x3 conv to 16, three stages of n blocks (16, 32, 64), GAP, FC."""

  def __init__(self, n: int, num_classes: int = 10):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(16)
    cin = 16
    for i, cout in enumerate((16, 32, 64), start=1):
      stride = 2 if i > 1 else 1
      blocks = [CifarBlock(cin, cout, stride)]
      blocks += [CifarBlock(cout, cout, 1) for _ in range(n - 1)]
      setattr(self, f'layer{i}', nn.Sequential(*blocks))
      cin = cout
    self.fc = nn.Linear(64, num_classes)

  def forward(self, x):
    x = functional.relu(self.bn1(self.conv1(x)))
    x = self.layer3(self.layer2(self.layer1(x)))
    return self.fc(x.mean((2, 3)))


def cifar_resnet20() -> nn.Module:
  torch.manual_seed(0)
  return randomize(CifarResNet(3), (32, 32))


def test_cifar_resnet20_matches_a_pytorch_definition():
  reference = cifar_resnet20()
  state_dict = reference.state_dict()
  assert sum(v.numel() for k, v in reference.named_parameters()) == 269_722
  x = random_batch((32, 32), batch=4)

  variables = convert.convert_state_dict('resnet20', state_dict)
  model = models.create_model('resnet20', NUM_CLASSES)
  got = cnn_jax_logits(model, variables, x)
  assert_logits_match(got, torch_logits(reference, x))


# ---------------------------------------------------- GoogLeNet's input


def test_googlenet_transform_input_matches_torchvision_everywhere():
  # What googlenet(weights=...).state_dict() holds: no aux heads, weights
  # that expect transform_input. Random inputs reach the image border, where
  # conv1 pads the rescaled image with zeros.
  hw = (75, 67)
  reference = torchvision_model(
    'googlenet_tv', transform_input=True, aux_logits=False
  )
  reference = randomize(reference, hw)
  x = random_batch(hw)
  variables = convert.convert_state_dict(
    'googlenet_tv', reference.state_dict(), transform_input=True
  )
  assert 'aux_head1' not in variables['params']
  model = models.create_model(
    'googlenet_tv', NUM_CLASSES, aux_heads=False, transform_input=True
  )
  got = cnn_jax_logits(model, variables, x)
  expected = torch_logits(reference, x)
  assert_logits_match(got, expected)
  # The field matters: without it the same weights see other inputs.
  plain = models.create_model('googlenet_tv', NUM_CLASSES, aux_heads=False)
  assert np.abs(cnn_jax_logits(plain, variables, x) - expected).max() > 0.1


def test_converted_googlenet_records_transform_input(tmp_path):
  reference = torchvision_model(
    'googlenet_tv', transform_input=True, aux_logits=False
  )
  path = tmp_path / 'googlenet.pth'
  torch.save(reference.state_dict(), path)
  info = convert.convert_file(
    'googlenet_tv', str(path), str(tmp_path / 'out'), transform_input=True
  )
  assert info['fields'] == {'aux_heads': False, 'transform_input': True}
  command = convert.eval_command(info, str(tmp_path / 'out'))
  assert '--config.model.fields.transform_input=True' in command
  built = train.build_model(config_from_command(command), 1000)
  assert built.transform_input and not built.aux_heads


# ---------------------------------------------------- errors


def test_shape_mismatch_names_the_first_tensor():
  state_dict = cifar_resnet20().state_dict()
  state_dict['layer2.0.conv2.weight'] = torch.zeros(32, 16, 3, 3)
  state_dict['layer3.0.conv2.weight'] = torch.zeros(64, 16, 3, 3)
  with pytest.raises(convert.ConversionError) as e:
    convert.convert_state_dict('resnet20', state_dict)
  message = str(e.value)
  assert 'layer2.0.conv2.weight (32, 16, 3, 3)' in message
  assert 'params/layer2/block0/conv2/kernel' in message
  assert '(3, 3, 32, 32)' in message
  assert 'layer3' not in message


def test_unused_and_missing_tensors_are_listed():
  state_dict = {k: v.numpy() for k, v in cifar_resnet20().state_dict().items()}
  del state_dict['layer1.1.bn2.running_var']
  state_dict['layer1.0.downsample.0.weight'] = np.zeros((16, 16, 1, 1))
  with pytest.raises(convert.ConversionError) as e:
    convert.convert_state_dict('resnet20', state_dict)
  message = str(e.value)
  assert '1 torch tensors without a counterpart' in message
  assert 'layer1.0.downsample.0.weight' in message
  assert 'batch_stats/layer1/block1/bn2/var' in message


def test_googlenet_needs_torchvisions_batch_norm_variant():
  with pytest.raises(ValueError, match='googlenet_tv'):
    convert.convert_state_dict('googlenet', {})


def test_pickled_model_needs_trust(tmp_path):
  path = tmp_path / 'model.pt'
  torch.save(cifar_resnet20(), path)
  with pytest.raises(convert.ConversionError, match='trust_pickle'):
    convert.load_torch_file(str(path))
  state_dict, _ = convert.load_torch_file(str(path), trust_pickle=True)
  assert 'layer3.2.bn2.running_mean' in state_dict


def test_training_checkpoint_dict_is_unwrapped(tmp_path):
  path = tmp_path / 'checkpoint.pth'
  state_dict = cifar_resnet20().state_dict()
  wrapped = {f'module.{k}': v for k, v in state_dict.items()}
  torch.save({'model': wrapped, 'epoch': 3}, path)
  loaded, _ = convert.load_torch_file(str(path))
  assert loaded.keys() == state_dict.keys()


def test_cnn_jax_imports_without_torch():
  code = (
    'import sys, cnn_jax, cnn_jax.convert, cnn_jax.models, cnn_jax.train; '
    'assert "torch" not in sys.modules, "torch was imported"'
  )
  subprocess.run([sys.executable, '-c', code], check=True)


def test_missing_or_foreign_torch_file_is_a_conversion_error(tmp_path):
  with pytest.raises(convert.ConversionError, match='no such file'):
    convert.convert_file('resnet18', str(tmp_path / 'x.pth'), str(tmp_path))
  text = tmp_path / 'notes.txt'
  text.write_text('hello')
  with pytest.raises(convert.ConversionError, match='not a file written by'):
    convert.convert_file('resnet18', str(text), str(tmp_path / 'out'))
  with pytest.raises(convert.ConversionError, match='googlenet_tv only'):
    convert.convert_file(
      'resnet18', str(text), str(tmp_path / 'out'), transform_input=True
    )


def test_googlenet_state_dict_needs_transform_input(tmp_path):
  path = tmp_path / 'googlenet.pth'
  torch.save({'fc.weight': torch.zeros(10, 1024)}, path)
  with pytest.raises(convert.ConversionError, match='--transform_input=true'):
    convert.convert_file('googlenet_tv', str(path), str(tmp_path / 'out'))


@pytest.mark.parametrize(
  'name,fields',
  [
    ('googlenet_tv', {'aux_heads': False}),
    ('googlenet_tv', {'aux_heads': True}),
    ('resnet50', {}),
    ('vgg11_bn', {}),
    ('resnet20', {}),
  ],
)
def test_eval_command_rebuilds_the_converted_model(name, fields):
  """The printed command's config builds the model that was converted."""
  command = convert.eval_command({'name': name, 'fields': fields}, '/conv')
  config = config_from_command(command)
  assert config.checkpoint.init_from == '/conv'
  assert config.train.eval_only
  built = train.build_model(config, 1000)
  want = models.create_model(name, 1000, **fields)
  for field in dataclasses.fields(want):
    if field.name not in ('parent', 'name', 'dtype'):
      assert getattr(built, field.name) == getattr(want, field.name), field


def config_from_command(command: str):
  """The config of a cnn_jax.main command line, overrides applied."""
  args = dict(a[2:].split('=', 1) for a in command.split() if '=' in a)
  path = REPO / args.pop('config')
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for key, value in args.items():
    if key.startswith('config.'):
      *parents, leaf = key.split('.')[1:]
      node = functools.reduce(getattr, parents, config)
      old = getattr(node, leaf)
      if isinstance(old, bool):
        value = value == 'True'
      setattr(node, leaf, type(old)(value) if old is not None else value)
  return config


def run_cli(*args) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, '-m', 'cnn_jax.convert', *args],
    capture_output=True,
    text=True,
    env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
  )


# ---------------------------------------------------- end to end


@pytest.fixture
def fast_init_prng():
  # The eval mode initialises a train state before loading the converted
  # weights over it; threefry's init compiles for half a minute more.
  old = jax.config.jax_default_prng_impl
  jax.config.update('jax_default_prng_impl', 'rbg')
  yield
  jax.config.update('jax_default_prng_impl', old)


def test_cli_output_evaluates_like_torch(tmp_path, cifar10_dir, fast_init_prng):
  """torch.save -> CLI -> eval mode: the same top-1, top-5 and loss."""
  reference = cifar_resnet20()
  torch.save(reference.state_dict(), tmp_path / 'resnet20.pth')
  out = run_cli(
    '--model=resnet20',
    f'--torch={tmp_path / "resnet20.pth"}',
    f'--out={tmp_path / "converted"}',
  )
  assert out.returncode == 0, out.stderr
  assert 'init_from=' in out.stdout

  config = config_lib.cifar_resnet_config(20)
  config.data.data_dir = str(cifar10_dir)
  config.data.eval_limit = 96
  config.train.eval_batch_size = 32
  config.train.eval_only = True
  config.parallel.num_devices = 1
  config.checkpoint.init_from = str(tmp_path / 'converted')
  result = train.train_and_evaluate(config, str(tmp_path / 'workdir'))

  info = data_lib.dataset_info(config.data)
  logits, labels = [], []
  for batch in data_lib.eval_iterator(config.data, 32):
    images = np.asarray(data_lib.normalize(batch['image'], info.mean, info.std))
    keep = batch['mask']
    logits.append(torch_logits(reference, images[keep].transpose(0, 3, 1, 2)))
    labels.append(batch['label'][keep])
  logits, labels = (
    torch.from_numpy(np.concatenate(logits)),
    np.concatenate(labels),
  )
  top5 = logits.topk(5, 1).indices.numpy()
  assert result['count'] == 96
  assert result['top1'] == pytest.approx((top5[:, 0] == labels).mean())
  assert result['top5'] == pytest.approx(
    (top5 == labels[:, None]).any(1).mean()
  )
  loss = functional.cross_entropy(
    logits, torch.from_numpy(labels).long()
  ).item()
  assert result['loss'] == pytest.approx(loss, abs=1e-4)


def test_model_json_records_the_conversion(tmp_path):
  import json

  torch.save(cifar_resnet20().state_dict(), tmp_path / 'r20.pth')
  info = convert.convert_file(
    'resnet20', str(tmp_path / 'r20.pth'), str(tmp_path / 'out')
  )
  saved = json.loads((tmp_path / 'out' / 'model.json').read_text())
  assert saved == info
  assert saved['name'] == 'resnet20' and saved['num_classes'] == 10
