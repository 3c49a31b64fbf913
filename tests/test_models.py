"""Model zoo: exact parameter counts, shapes, switches and forward passes.

Counts come from `jax.eval_shape` (tracing only). Forwards are jitted at
small sizes with XLA's optimisations mostly off (compiling dominates on
CPU), on variables filled from shapes: the default threefry PRNG compiles
for about a second per parameter shape here, so the few real inits use the
'rbg' PRNG. Expected figures are from ../shared/REFERENCE.md.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import models
from cnn_jax.models import googlenet, layers, resnet

KEY = jax.random.key(0)
INIT_KEY = jax.random.key(0, impl='rbg')


@pytest.fixture(autouse=True, scope='module')
def fast_compile():
  old = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', old)


def forward(model, variables, x, train=False):
  """One jitted apply; returns (logits, mutated collections)."""
  fn = lambda v, x: model.apply(
    v,
    x,
    train=train,
    mutable=['batch_stats', 'aux_logits'],
    rngs={'dropout': KEY},
  )
  return jax.jit(fn)(variables, x)


def features(model, variables, x, train=False):
  fn = lambda v, x: models.get_features(
    model, v, x, train=train, rngs={'dropout': KEY}
  )
  return jax.jit(fn)(variables, x)


def shapes(model, size=224, batch=1, **kw):
  x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda: model.init(KEY, jnp.zeros(x.shape), **kw))


def num_params(variables) -> int:
  return sum(math.prod(p.shape) for p in jax.tree.leaves(variables['params']))


def fake_variables(model, x):
  """He-scaled normal weights, unit BN; no per-shape compilation."""
  rng = np.random.default_rng(0)

  def fill(path, s):
    key = path[-1].key
    if key in ('scale', 'var'):
      return jnp.ones(s.shape, s.dtype)
    if key in ('bias', 'mean'):
      return jnp.zeros(s.shape, s.dtype)
    std = math.sqrt(2 / math.prod(s.shape[:-1]))
    return jnp.asarray(rng.normal(0, std, s.shape), s.dtype)

  variables = jax.eval_shape(model.init, KEY, x)
  return jax.tree_util.tree_map_with_path(fill, variables)


# name, fields, num_classes, image size, parameters (REFERENCE.md).
PARAMS = [
  ('vgg11', {}, 1000, 224, 132_863_336),
  ('vgg13', {}, 1000, 224, 133_047_848),
  ('vgg16', {}, 1000, 224, 138_357_544),
  ('vgg19', {}, 1000, 224, 143_667_240),
  ('vgg11_bn', {}, 1000, 224, 132_868_840),
  ('vgg13_bn', {}, 1000, 224, 133_053_736),
  ('vgg16_bn', {}, 1000, 224, 138_365_992),
  ('vgg19_bn', {}, 1000, 224, 143_678_248),
  ('googlenet_tv', {'aux_heads': False}, 1000, 224, 6_624_904),
  ('googlenet_tv', {}, 1000, 224, 13_004_888),
  ('googlenet', {'aux_heads': False}, 1000, 224, 6_998_552),
  ('googlenet', {}, 1000, 224, 6_998_552 + 3_188_840 + 3_190_888),
  ('googlenet', {'aux_heads': False, 'batch_norm': True}, 1000, 224, 7_005_832),
  (
    'googlenet',
    {'aux_heads': False, 'large_kernel': 3},
    1000,
    224,
    6_998_552 - 380_928,
  ),  # fmt: skip
  ('resnet18', {}, 1000, 224, 11_689_512),
  ('resnet34', {}, 1000, 224, 21_797_672),
  ('resnet50', {}, 1000, 224, 25_557_032),
  ('resnet50', {'version': 'v1'}, 1000, 224, 25_557_032),
  ('resnet101', {}, 1000, 224, 44_549_160),
  ('resnet152', {}, 1000, 224, 60_192_808),
  ('resnet20', {}, 10, 32, 269_722),
  ('resnet32', {}, 10, 32, 464_154),
  ('resnet44', {}, 10, 32, 658_586),
  ('resnet56', {}, 10, 32, 853_018),
  ('resnet110', {}, 10, 32, 1_727_962),
  pytest.param('resnet1202', {}, 10, 32, 19_421_274, marks=pytest.mark.slow),
  # Option B: 1x1 projections (+BN) into 32 and 64 channels.
  ('resnet20', {'shortcut': 'B'}, 10, 32, 269_722 + 576 + 2_176),
  # Option A shortcuts have no parameters: plain twins count the same.
  ('plain20', {}, 10, 32, 269_722),
  ('plain56', {}, 10, 32, 853_018),
  ('plain110', {}, 10, 32, 1_727_962),
]

# ResNet-18/34 projections (1x1 conv + BN) into 128, 256, 512 channels.
PROJECTIONS = sum(c * 2 * c + 2 * 2 * c for c in (64, 128, 256))


@pytest.mark.parametrize('name,fields,classes,size,expected', PARAMS)
def test_param_count(name, fields, classes, size, expected):
  model = models.create_model(name, classes, **fields)
  assert num_params(shapes(model, size)) == expected


@pytest.mark.parametrize('depth', [18, 34])
def test_plain_imagenet_twin_drops_only_projections(depth):
  plain = num_params(shapes(models.create_model(f'plain{depth}')))
  res = num_params(shapes(models.create_model(f'resnet{depth}')))
  assert PROJECTIONS == 173_824
  assert plain == res - PROJECTIONS


def test_registry_names():
  names = models.list_models()
  for depth in (11, 13, 16, 19):
    assert {f'vgg{depth}', f'vgg{depth}_bn'} <= set(names)
  for depth in (18, 34, 50, 101, 152, 20, 32, 44, 56, 110):
    assert f'resnet{depth}' in names
  for depth in (18, 34, 20, 32, 44, 56, 110):
    assert f'plain{depth}' in names
  assert {'googlenet', 'googlenet_tv'} <= set(names)


def test_unknown_name_lists_known_models():
  with pytest.raises(ValueError, match='resnet50.*vgg|vgg.*resnet50'):
    models.create_model('resnet51')


def test_unknown_field_is_named():
  with pytest.raises(TypeError, match='stride_on_1x1'):
    models.create_model('resnet50', stride_on_1x1=True)


@pytest.mark.parametrize('name', ['resnet20', 'resnet18', 'vgg11', 'googlenet'])
def test_nchw_batch_is_rejected(name):
  model = models.create_model(name, 10)
  with pytest.raises(ValueError, match='NCHW'):
    model.init(KEY, jnp.zeros((2, 3, 32, 32)))


def intermediate_shapes(model, size):
  """Output shape of every submodule call, by path, from shapes only."""
  variables = shapes(model, size)
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  _, state = jax.eval_shape(
    lambda v, x: model.apply(
      v, x, capture_intermediates=True, mutable=['intermediates']
    ),
    variables,
    x,
  )
  flat = jax.tree_util.tree_flatten_with_path(state['intermediates'])[0]
  return {
    '/'.join(str(k.key) for k in path[:-1] if hasattr(k, 'key')): leaf.shape
    for path, leaf in flat
  }


@pytest.mark.parametrize('name', ['googlenet', 'googlenet_tv'])
def test_googlenet_map_sizes(name):
  out = intermediate_shapes(models.create_model(name), 224)
  expected = {
    'inception3a': (28, 28, 256),
    'inception3b': (28, 28, 480),
    'inception4a': (14, 14, 512),
    'inception4b': (14, 14, 512),
    'inception4c': (14, 14, 512),
    'inception4d': (14, 14, 528),
    'inception4e': (14, 14, 832),
    'inception5a': (7, 7, 832),
    'inception5b': (7, 7, 1024),
  }
  for key, shape in expected.items():
    assert out[f'{key}/__call__'] == (1, *shape), key
  assert out['conv1/__call__'] == (1, 112, 112, 64)
  # Pools between stages (pool3 gives 14x14x480, pool4 7x7x832) feed 4a/5a.
  assert out['inception4a/branch1/conv/__call__'][1:3] == (14, 14)
  assert out['inception5a/branch4_proj/conv/__call__'][1:3] == (7, 7)


def test_googlenet_pool_sizes_and_pooled_features():
  model = models.create_model('googlenet_tv')
  variables = shapes(model)
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  _, state = jax.eval_shape(
    lambda v, x: model.apply(v, x, mutable=['intermediates']), variables, x
  )
  assert state['intermediates']['pre_logits'][0].shape == (1, 1024)
  from cnn_jax.summary import summarize

  rows = {r.name: r.shape for r in summarize(model, (1, 224, 224, 3)).rows}
  assert rows['pool3'] == (1, 14, 14, 480)
  assert rows['pool4'] == (1, 7, 7, 832)
  assert rows['pool1'] == (1, 56, 56, 64)


@pytest.mark.parametrize(
  'version,shape', [('v1', (28, 28)), ('v1.5', (56, 56))]
)
def test_resnet50_stride_placement(version, shape):
  out = intermediate_shapes(
    models.create_model('resnet50', version=version), 224
  )
  # conv3_1 of the paper is layer2/block0; its first 1x1 is conv1.
  assert out['layer2/block0/conv1/__call__'] == (1, *shape, 128)
  assert out['layer2/block0/__call__'] == (1, 28, 28, 512)


def test_vgg_small_input_feeds_real_final_map():
  model = models.create_model('vgg16', 10)
  variables = shapes(model, 32)
  assert variables['params']['head']['fc1']['kernel'].shape == (512, 4096)
  out = intermediate_shapes(model, 32)
  assert out['block5/__call__'] == (1, 1, 1, 512)
  assert shapes(models.create_model('vgg16'))['params']['head']['fc1'][
    'kernel'
  ].shape == (7 * 7 * 512, 4096)


def test_flatten_is_channel_major():
  x = jnp.arange(2 * 3 * 4 * 5.0).reshape(2, 3, 4, 5)
  nchw = np.asarray(x).transpose(0, 3, 1, 2).reshape(2, -1)
  np.testing.assert_array_equal(layers.flatten_chw(x), nchw)


@pytest.mark.parametrize('family', ['vgg11', 'resnet20', 'googlenet_tv'])
@pytest.mark.parametrize('head', ['fc', 'gap_fc', 'gap_conv'])
def test_heads(family, head):
  fields = {'stem': 'cifar'} if family == 'googlenet_tv' else {}
  model = models.create_model(family, 10, head=head, **fields)
  params = shapes(model, 32)['params']['head']
  if head == 'gap_conv':
    assert list(params) == ['conv']
    assert params['conv']['kernel'].shape[:2] == (1, 1)
    assert params['conv']['kernel'].shape[-1] == 10
  elif head == 'gap_fc':
    assert list(params) == ['fc']
  elif family == 'vgg11':
    assert list(params) == ['fc1', 'fc2', 'fc3']
  else:
    assert list(params) == ['fc']


def test_gap_conv_is_class_means():
  model = layers.Head(3, 'gap_conv')
  x = jax.random.normal(KEY, (2, 4, 4, 5))
  variables = model.init(KEY, x)
  logits, _ = model.apply(variables, x)
  k = variables['params']['conv']
  maps = jnp.einsum('bhwc,ck->bhwk', x, k['kernel'][0, 0]) + k['bias']
  np.testing.assert_allclose(logits, maps.mean((1, 2)), rtol=1e-5, atol=1e-5)


def test_vgg_kernel_ablation():
  stacked = shapes(models.create_model('vgg16', 10), 32)['params']
  single = shapes(models.create_model('vgg16', 10, stacked_3x3=False), 32)
  single = single['params']
  assert [k['kernel'].shape for k in stacked['block1'].values()] == [
    (3, 3, 3, 64),
    (3, 3, 64, 64),
  ]
  # Two 3x3 become one 5x5, three 3x3 one 7x7: the same receptive field.
  assert list(single['block1']) == ['conv1']
  assert single['block1']['conv1']['kernel'].shape == (5, 5, 3, 64)
  assert single['block3']['conv1']['kernel'].shape == (7, 7, 128, 256)


def test_inception_without_reductions():
  model = models.create_model('googlenet_tv', reductions=False, aux_heads=False)
  params = shapes(model)['params']['inception3a']
  assert 'branch2_reduce' not in params and 'branch3_reduce' not in params
  assert params['branch2']['conv']['kernel'].shape == (3, 3, 192, 128)
  out = intermediate_shapes(model, 224)
  assert out['inception3a/__call__'] == (1, 28, 28, 256)


def test_paper_aux_pool_needs_room():
  model = models.create_model('googlenet', 10)
  with pytest.raises(ValueError, match='5x5 average pool'):
    shapes(model, 32)


# Every registered model, one forward in each mode and dtype. Compiling
# dominates (several seconds per model and dtype on 2 cores), so the default
# run covers each code path once: VGG with and without BN, both GoogLeNets,
# basic, bottleneck, CIFAR and plain ResNets. The other models repeat those
# blocks at another depth and run with -m slow.
FORWARD_SIZES = {'googlenet': 80}
FORWARD_DEFAULT = {
  'vgg11', 'vgg19_bn', 'googlenet', 'googlenet_tv',
  'resnet18', 'resnet50', 'resnet20', 'plain20',
}  # fmt: skip


# resnet1202 is resnet110's block repeated 200 times and takes minutes to
# compile; test_param_count covers it.
FORWARD = [
  pytest.param(name, marks=() if name in FORWARD_DEFAULT else pytest.mark.slow)
  for name in models.list_models()
  if name != 'resnet1202'
]


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('name', FORWARD)
def test_forward(name, dtype):
  model = models.create_model(name, 10, dtype=dtype)
  size = FORWARD_SIZES.get(name, 32)
  x = jax.random.normal(KEY, (2, size, size, 3))
  variables = fake_variables(model, x)
  for collection in variables.values():
    for leaf in jax.tree.leaves(collection):
      assert leaf.dtype == jnp.float32
  logits, eval_state = forward(model, variables, x)
  train_logits, state = forward(model, variables, x, train=True)
  for out in (logits, train_logits):
    assert out.shape == (2, 10) and out.dtype == jnp.float32
    assert bool(jnp.isfinite(out).all())
  for leaf in jax.tree.leaves(state.get('batch_stats', {})):
    assert leaf.dtype == jnp.float32
  if name.startswith('googlenet'):  # Aux heads: built, and run in train only.
    assert {'aux_head1', 'aux_head2'} <= set(variables['params'])
    aux = {k: v[0].shape for k, v in state['aux_logits'].items()}
    assert aux == {'aux1': (2, 10), 'aux2': (2, 10)}
    assert 'aux_logits' not in eval_state


def test_init_and_features():
  model = models.create_model('resnet20', 10)
  x = jax.random.normal(KEY, (2, 32, 32, 3))
  variables = model.init(INIT_KEY, x)
  assert set(variables) == {'params', 'batch_stats'}
  feats = features(model, variables, x)
  assert {k: v.shape for k, v in feats.items()} == {
    'stem': (2, 32, 32, 16),
    'stage1': (2, 32, 32, 16),
    'stage2': (2, 16, 16, 32),
    'stage3': (2, 8, 8, 64),
    'pre_logits': (2, 64),
  }


def test_vgg_features():
  model = models.create_model('vgg11', 10)
  x = jnp.ones((1, 32, 32, 3))
  feats = features(model, fake_variables(model, x), x)
  assert feats['stage1'].shape == (1, 16, 16, 64)
  assert feats['stage5'].shape == (1, 1, 1, 512)
  assert feats['pre_logits'].shape == (1, 4096)


# Zero-init residual: each block starts as relu(shortcut(x)).


def block_and_shortcut(kind):
  zero = {'zero_init_residual': True}
  if kind == 'identity':
    return resnet.BasicBlock(8, 1, **zero), lambda v, x: x
  if kind == 'option_a':
    block = resnet.BasicBlock(16, 2, shortcut='A', **zero)
    pad = ((0, 0), (0, 0), (0, 0), (0, 8))
    return block, lambda v, x: jnp.pad(x[:, ::2, ::2], pad)
  version = kind.split('_')[1]
  block = resnet.BottleneckBlock(4, 2, version=version, **zero)

  def projection(v, x):
    y = layers.conv(16, 1, 2, name='proj_conv').apply(
      {'params': v['params']['proj_conv']}, x
    )
    return layers.BatchNorm().apply(
      {
        'params': v['params']['proj_bn'],
        'batch_stats': v['batch_stats']['proj_bn'],
      },
      y,
    )

  return block, projection


@pytest.mark.parametrize(
  'kind', ['identity', 'option_a', 'bottleneck_v1', 'bottleneck_v1.5']
)
def test_zero_init_block_is_relu_of_shortcut(kind):
  block, shortcut = block_and_shortcut(kind)
  x = jax.random.normal(KEY, (2, 8, 8, 8))
  variables = block.init(INIT_KEY, x)
  last = 'bn3' if 'bottleneck' in kind else 'bn2'
  assert not np.any(variables['params'][last]['scale'])
  expected = nn.relu(shortcut(variables, x))
  np.testing.assert_allclose(block.apply(variables, x), expected, atol=1e-6)
  out, _ = block.apply(variables, x, train=True, mutable=['batch_stats'])
  if kind in ('identity', 'option_a'):  # Shortcut without BN: same in train.
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_zero_init_every_block_of_a_model():
  model = models.create_model('resnet20', 10, zero_init_residual=True)
  x = jax.random.normal(KEY, (2, 32, 32, 3))
  variables = model.init(INIT_KEY, x)
  params = variables['params']
  for layer in ('layer1', 'layer2', 'layer3'):
    for block in params[layer].values():
      assert not np.any(block['bn2']['scale'])
      assert np.all(block['bn1']['scale'] == 1)
  # With identity shortcuts and ReLU'd inputs, stage1 passes the stem through.
  feats = features(model, variables, x)
  np.testing.assert_allclose(feats['stage1'], feats['stem'], atol=1e-6)


def test_zero_init_needs_shortcuts():
  with pytest.raises(ValueError, match='residual'):
    shapes(models.create_model('plain20', 10, zero_init_residual=True), 32)


# BatchNorm.


def test_batch_norm_virtual_batches():
  x = (
    jax.random.normal(KEY, (8, 3, 3, 4))
    * jnp.arange(1.0, 9.0)[:, None, None, None]
  )
  bn = layers.BatchNorm(virtual_batch_size=2)
  variables = bn.init(KEY, x)
  y, state = bn.apply(variables, x, train=True, mutable=['batch_stats'])
  for g in range(4):
    group = np.asarray(x[2 * g : 2 * g + 2])
    mean, var = group.mean((0, 1, 2)), group.var((0, 1, 2))
    np.testing.assert_allclose(
      y[2 * g : 2 * g + 2], (group - mean) / np.sqrt(var + 1e-5), atol=1e-4
    )
  groups = np.asarray(x).reshape(4, -1, 4)
  stats = state['batch_stats']
  np.testing.assert_allclose(
    stats['mean'], 0.1 * groups.mean(1).mean(0), rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(
    stats['var'], 0.9 + 0.1 * groups.var(1).mean(0), rtol=1e-5
  )
  with pytest.raises(ValueError, match='bn_virtual_batch_size=3'):
    layers.BatchNorm(virtual_batch_size=3).apply(
      variables, x, train=True, mutable=['batch_stats']
    )


def test_batch_norm_float32_statistics_in_bfloat16():
  x = (jax.random.normal(KEY, (4, 2, 2, 3)) + 100).astype(jnp.bfloat16)
  bn = layers.BatchNorm(dtype=jnp.bfloat16)
  variables = bn.init(KEY, x)
  y, state = bn.apply(variables, x, train=True, mutable=['batch_stats'])
  assert y.dtype == jnp.bfloat16
  assert state['batch_stats']['mean'].dtype == jnp.float32
  np.testing.assert_allclose(
    state['batch_stats']['mean'],
    0.1 * np.asarray(x, np.float32).mean((0, 1, 2)),
    rtol=1e-6,
  )


def test_virtual_batch_field_reaches_every_batch_norm():
  model = models.create_model('resnet20', 10, bn_virtual_batch_size=2)
  x = jax.random.normal(KEY, (4, 8, 8, 3))
  variables = fake_variables(model, x)
  forward(model, variables, x, train=True)
  with pytest.raises(ValueError, match='bn_virtual_batch_size'):
    forward(model, variables, x[:3], train=True)


# Pooling and LRN.


@pytest.mark.parametrize(
  'size,window,stride,pad,ceil,expected',
  [
    (112, 3, 2, 0, True, 56),  # GoogLeNet pool1
    (112, 3, 2, 0, False, 55),
    (14, 2, 2, 0, True, 7),  # torchvision's pool4
    (14, 3, 2, 0, True, 7),  # paper's pool4
    (28, 3, 1, 1, True, 28),  # inception branch4
    (5, 2, 2, 1, True, 3),  # last window would start in padding: dropped
    (112, 3, 2, 1, False, 56),  # ResNet stem
  ],
)
def test_max_pool_sizes_match_pytorch(
  size, window, stride, pad, ceil, expected
):
  x = jnp.zeros((1, size, size, 1))
  y = layers.max_pool(x, window, stride, pad, ceil_mode=ceil)
  assert y.shape == (1, expected, expected, 1)


def test_max_pool_ignores_padding():
  x = -jnp.ones((1, 3, 3, 1))
  assert float(layers.max_pool(x, 3, 2, 1, ceil_mode=True).max()) == -1.0


def test_adaptive_avg_pool_windows():
  x = jnp.arange(14.0)[None, :, None, None] * jnp.ones((1, 14, 14, 1))
  y = layers.adaptive_avg_pool(x, 4, name='pool')
  # torchvision windows on 14 -> 4: [0,4), [3,7), [7,11), [10,14).
  np.testing.assert_allclose(y[0, :, 0, 0], [1.5, 4.5, 8.5, 11.5])


def test_local_response_norm():
  x = jax.random.normal(KEY, (1, 2, 2, 7))
  y = layers.local_response_norm(x, name='lrn')
  sq = np.pad(np.asarray(x) ** 2, ((0, 0),) * 3 + ((2, 2),))
  window = sum(sq[..., i : i + 7] for i in range(5))
  np.testing.assert_allclose(y, x / (1 + 1e-4 / 5 * window) ** 0.75, rtol=1e-6)


def test_googlenet_variants_differ_where_documented():
  tv = models.create_model('googlenet_tv')
  paper = models.create_model('googlenet')
  assert (tv.batch_norm, tv.large_kernel, tv.lrn, tv.bn_epsilon) == (
    True, 3, False, 1e-3)  # fmt: skip
  assert (paper.batch_norm, paper.large_kernel, paper.lrn) == (False, 5, True)
  assert googlenet.INCEPTION['5b'] == (384, 192, 384, 48, 128, 128)
