"""The experiment runner (resume, finished variants, reports) and the
experiments' exact counts and verdicts."""

import json
import math
import os
import types

import pytest

from cnn_jax import experiments, train
from cnn_jax.experiments import (
  degradation,
  gap_head,
  memory_profile,
  reductions,
  runner,
  small_kernels,
)
from cnn_jax.experiments import report as rep

PNG = b'\x89PNG\r\n\x1a\n'


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


# ------------------------------------------------------ exact counts


@pytest.mark.parametrize(
  ('scale', 'c', 'two', 'three'),
  [
    # cpu widths (32, 32, 64, 64, 64): block 2 (32->32) of both nets, and
    # blocks 4 and 5 (64->64).
    ('cpu', 64, (18 * 64**2, 25 * 64**2), (27 * 64**2, 49 * 64**2)),
    # VGG's own widths: only block 5 (512->512) has C_in == C.
    ('full', 512, (18 * 512**2, 25 * 512**2), (27 * 512**2, 49 * 512**2)),
  ],
)
def test_block_weights_are_the_papers_formulas(scale, c, two, three):
  stack13 = small_kernels.block_weights('vgg13_bn', scale, True)
  single13 = small_kernels.block_weights('vgg13_bn', scale, False)
  stack16 = small_kernels.block_weights('vgg16_bn', scale, True)
  single16 = small_kernels.block_weights('vgg16_bn', scale, False)
  # Block 5 of VGG-13 (two convs) and of VGG-16 (three), C channels.
  assert (stack13[4]['n'], stack13[4]['c_in'], stack13[4]['c']) == (2, c, c)
  assert (stack13[4]['weights'], single13[4]['weights']) == two
  assert single13[4]['kernel'] == 5
  assert (stack16[4]['n'], stack16[4]['c_in'], stack16[4]['c']) == (3, c, c)
  assert (stack16[4]['weights'], single16[4]['weights']) == three
  assert single16[4]['kernel'] == 7
  # Every block, C_in == C or not, follows 9 C_in C + 9 (n-1) C^2 against
  # (2n+1)^2 C_in C.
  for stack, single in ((stack13, single13), (stack16, single16)):
    for s, b in zip(stack, single, strict=True):
      n, c_in, c_out = s['n'], s['c_in'], s['c']
      assert s['weights'] == 9 * c_in * c_out + 9 * (n - 1) * c_out**2
      assert b['weights'] == (2 * n + 1) ** 2 * c_in * c_out


def test_stacks_and_single_kernels_see_the_same_receptive_field():
  for net in small_kernels.NETS:
    stacked = small_kernels.receptive_fields(net, 'cpu', True)
    single = small_kernels.receptive_fields(net, 'cpu', False)
    assert stacked == single
  # Two 3x3 (or one 5x5) on the input: 5 pixels; after the 2x2 pool the
  # next pair adds 4 steps of 2 pixels: 6 + 8 = 14.
  assert small_kernels.receptive_fields('vgg13_bn', 'cpu', True)[:2] == [
    5,
    14,
  ]


def test_weights_table_is_exact_at_cpu_scale():
  table, exact = small_kernels.weights_table('cpu')
  assert exact
  assert '| vgg16_bn | 5 | 3 x 3x3 vs 7x7 | 64→64 | 110,592 | 200,704 |' in (
    table
  )
  assert '27C² = 110,592 vs 49C² = 200,704' in table
  assert '18C² = 18,432 vs 25C² = 25,600' in table


# ---------------------------------------- a tiny sweep on real CIFAR-10


@pytest.fixture(scope='module')
def tiny_sweep(tmp_path_factory):
  """small_kernels at tiny scale: one variant stopped at step 2 of 3, then
  the whole sweep, on the real CIFAR-10 files."""
  workdir = str(tmp_path_factory.mktemp('small_kernels'))
  partial = runner.run_experiment(
    small_kernels,
    workdir,
    'tiny',
    only=['vgg13_3x3'],
    overrides={'train.stop_at_step': 2},
  )
  full = runner.run_experiment(small_kernels, workdir, 'tiny')
  return workdir, partial, full


def test_a_stopped_variant_is_unfinished_and_has_no_report(tiny_sweep):
  _, partial, _ = tiny_sweep
  assert partial.report_path is None
  assert partial.runs == []
  assert partial.pending == ['vgg13_3x3/seed0', 'vgg13_large/seed0']


def test_a_stopped_variant_resumes_where_it_stopped(tiny_sweep):
  workdir, _, full = tiny_sweep
  resumed = os.path.join(workdir, 'vgg13_3x3', 'seed0')
  fresh = os.path.join(workdir, 'vgg13_large', 'seed0')
  attempts = read_jsonl(os.path.join(resumed, runner.ATTEMPTS_FILE))
  assert [(a['start_step'], a['end_step']) for a in attempts] == [
    (0, 2),
    (2, 3),
  ]
  starts = [
    r['step']
    for r in read_jsonl(os.path.join(resumed, 'metrics.jsonl'))
    if 'num_params' in r
  ]
  assert starts == [0, 2]
  assert [
    (a['start_step'], a['end_step'])
    for a in read_jsonl(os.path.join(fresh, runner.ATTEMPTS_FILE))
  ] == [(0, 3)]
  for run in full.runs:
    assert run.result['step'] == 3
    assert run.result['eval']['count'] == 16
  assert full.pending == []


def test_finished_variants_are_not_retrained(tiny_sweep, monkeypatch):
  workdir, _, full = tiny_sweep
  with open(full.report_path) as f:
    before = f.read()

  def refuse(*args, **kwargs):
    raise AssertionError('a finished variant was trained again')

  monkeypatch.setattr(train, 'train_and_evaluate', refuse)
  again = runner.run_experiment(small_kernels, workdir, 'tiny')
  with open(again.report_path) as f:
    assert f.read() == before
  assert [r.result for r in again.runs] == [r.result for r in full.runs]


def test_report_holds_the_tables_plots_and_computed_verdict(tiny_sweep):
  workdir, _, full = tiny_sweep
  with open(full.report_path) as f:
    text = f.read()
  for heading in ('## Hypothesis', '## Setup', '## Results', '## Verdict'):
    assert heading in text
  assert 'Shrunk for `tiny` scale' in text
  assert '3 steps of 8 images' in text
  # The exact rows: tiny widths (4, 4, 8, 8, 8), blocks with C = 8.
  assert '| vgg13_bn | 4 | 2 x 3x3 vs 5x5 | 8→8 | 1,152 | 1,600 |' in text
  assert '| vgg16_bn | 5 | 3 x 3x3 vs 7x7 | 8→8 | 1,728 | 3,136 |' in text
  accuracy = {}
  for run in full.runs:
    top1 = run.result['eval']['top1']
    accuracy[run.variant.name] = [top1]
    assert f'| {run.variant.name} |' in text
    assert f'| {100 * top1:.2f} |' in text
  expected = small_kernels.verdict(True, accuracy, seeds=1)
  assert expected.line() in text
  assert text.count('**Verdict:') == 1
  with open(os.path.join(workdir, 'small_kernels.png'), 'rb') as f:
    assert f.read(8) == PNG


def test_results_of_a_changed_config_are_refused(tiny_sweep):
  workdir, _, _ = tiny_sweep

  def changed(scale, seeds):
    out = small_kernels.variants(scale, seeds)
    out[0].config.optim.learning_rate = 0.01
    return out

  experiment = types.SimpleNamespace(**vars(small_kernels))
  experiment.variants = changed
  with pytest.raises(runner.StaleResultError, match='vgg13_3x3/seed0'):
    runner.run_experiment(experiment, workdir, 'tiny')


def test_a_signal_stops_the_sweep(tmp_path, monkeypatch):
  started = []

  def stopped_by_sigterm(config, workdir):
    # What the train loop returns after SIGTERM: a checkpoint, no eval.
    started.append(workdir)
    os.makedirs(workdir, exist_ok=True)
    return {'step': 1}

  monkeypatch.setattr(train, 'train_and_evaluate', stopped_by_sigterm)
  with pytest.raises(runner.SweepInterruptedError, match='step 1 of 3'):
    runner.run_experiment(small_kernels, str(tmp_path), 'tiny')
  assert len(started) == 1  # The next variant was not started.


def test_only_must_name_a_variant(tmp_path):
  with pytest.raises(ValueError, match='vgg13_3x3/seed0'):
    runner.run_experiment(small_kernels, str(tmp_path), 'tiny', only=['x'])


def test_unknown_experiment_lists_the_known_ones():
  with pytest.raises(ValueError, match='degradation, small_kernels'):
    experiments.get('nope')


# ------------------------------------------- analyses on given numbers


def fake_run(tmp_path, name, seed, losses, top1=0.5):
  """A finished run whose metrics.jsonl holds the given loss curve."""
  workdir = tmp_path / name / f'seed{seed}'
  workdir.mkdir(parents=True)
  rows = [{'step': 0, 'num_params': 1000}]
  for i, loss in enumerate(losses, start=1):
    rows.append(
      {'step': 10 * i, 'train/loss': loss, 'train/accuracy': 1 - loss / 3}
    )
  rows.append({'step': 10 * len(losses), 'eval/top1': top1})
  with open(workdir / 'metrics.jsonl', 'w') as f:
    f.write('\n'.join(json.dumps(r) for r in rows))
  variant = runner.Variant(name, None, seed)
  result = {
    'num_params': 1000,
    'eval': {'top1': top1, 'count': 1000},
    'train_eval': {'top1': top1 + 0.1},
    'images_per_second': 100.0,
    'train_seconds': 60.0,
  }
  return runner.Run(variant, str(workdir), result)


def curves(plain56_offset, resnet56_offset, seeds=1):
  base = [2.3 - 0.1 * i for i in range(10)]
  shift = lambda d, s: [x + d + 0.001 * s for x in base]
  return {
    'plain20': [shift(0, s) for s in range(seeds)],
    'plain56': [shift(plain56_offset, s) for s in range(seeds)],
    'resnet20': [shift(0, s) for s in range(seeds)],
    'resnet56': [shift(resnet56_offset, s) for s in range(seeds)],
  }


@pytest.mark.parametrize(
  ('plain', 'residual', 'seeds', 'outcome', 'strength'),
  [
    (0.2, -0.1, 1, 'supports', 'moderate'),
    (0.2, 0.1, 1, 'partly supports', 'moderate'),
    (-0.2, -0.1, 1, 'does not support', 'weak'),
    (0.2, -0.1, 3, 'supports', 'strong'),
  ],
)
def test_degradation_verdict_follows_the_curves(
  tmp_path, plain, residual, seeds, outcome, strength
):
  runs = [
    fake_run(tmp_path, name, s, losses)
    for name, per_seed in curves(plain, residual, seeds).items()
    for s, losses in enumerate(per_seed)
  ]
  groups = runner.by_name(runs)
  result = degradation.compare_pair(groups['plain56'], groups['plain20'])
  assert result['difference'] == pytest.approx(plain)
  # The second half of the 10 logged steps: 60 .. 100.
  assert (result['above'], result['of']) == ((5, 5) if plain > 0 else (0, 5))
  path = runner.write_report(degradation, runs, 'cpu', seeds, str(tmp_path))
  with open(path) as f:
    text = f.read()
  line = f'**Verdict: the measurement {outcome} the hypothesis ({strength}).**'
  assert line in text
  assert '| plain56 | 1,000 |' in text
  for png in ('degradation_train_loss.png', 'degradation_test_error.png'):
    with open(tmp_path / png, 'rb') as f:
      assert f.read(8) == PNG


def test_small_kernels_verdict():
  acc = {'vgg13_3x3': [0.60, 0.62], 'vgg13_large': [0.50, 0.51]}
  v = small_kernels.verdict(True, acc, seeds=2)
  assert v.outcome == 'supports'
  assert v.strength == (
    'counts exact; accuracy differences strong against the seed spread'
  )
  acc['vgg13_large'] = [0.65, 0.66]
  assert small_kernels.verdict(True, acc, 2).outcome == 'partly supports'
  assert small_kernels.verdict(False, acc, 2).outcome == 'does not support'


def test_reductions_verdict_uses_test_set_noise():
  # 1,000 test images at 50%: two standard errors of a difference are
  # 2 * sqrt(0.5 / 1000) = 4.5 points.
  assert reductions.two_sigma(0.5, 0.5, 1000) == pytest.approx(
    2 * math.sqrt(0.5 / 1000)
  )
  within = reductions.verdict((32, 90), (0.48, 0.50), 1000)
  assert within.outcome == 'supports'
  assert within.strength.endswith('weak')
  harmed = reductions.verdict((32, 90), (0.40, 0.50), 1000)
  assert harmed.outcome == 'partly supports'
  assert reductions.verdict((90, 32), (0.5, 0.5), 1000).outcome == (
    'does not support'
  )


def test_gap_head_verdict():
  ratios = {'vgg16': 130.0, 'resnet20': 63.0, 'vgg16@224': 240.0}
  families = {
    'vgg16': {'fc': (0.50, 0.70, 2000), 'gap_fc': (0.51, 0.60, 2000)},
    'resnet20': {'fc': (0.45, 0.80, 2000), 'gap_fc': (0.47, 0.60, 2000)},
  }
  v = gap_head.verdict(families, ratios)
  assert v.outcome == 'supports'
  assert 'smaller with GAP in 2 of 2 families' in v.reason
  families['vgg16']['gap_fc'] = (0.30, 0.40, 2000)
  assert gap_head.verdict(families, ratios).outcome == 'partly supports'


def test_mean_std_and_plus_minus():
  assert rep.pm([0.5, 0.7], 1, 100) == '60.0 ± 14.1'
  assert rep.pm([0.5], 2, 100) == '50.00'
  assert math.isnan(rep.mean_std([1.0])[1])


# ------------------------------------------------- no-training report


def test_memory_profile_matches_the_reference(tmp_path):
  out = runner.run_experiment(memory_profile, str(tmp_path), 'cpu')
  with open(out.report_path) as f:
    text = f.read()
  assert 'VGG-16 activations 15,237,608 (reference 15,237,608, equal)' in text
  assert 'head/fc1 with 102,764,544 parameters' in text
  assert '| VGG-16 | 138,357,544 | 15.470G | 15,237,608 |' in text
  assert 'supports the hypothesis (exact counts; strongly)' in text
  for png in ('memory_profile_layers.png', 'memory_profile_cumulative.png'):
    with open(tmp_path / png, 'rb') as f:
      assert f.read(8) == PNG


def test_budget_shrinks_the_config_and_says_so():
  variant = degradation.variants('cpu', 1)[1]
  config = variant.config
  assert variant.name == 'plain56'
  assert config.model.name == 'plain56'
  assert config.train.num_train_steps == 300
  assert config.train.batch_size == 32
  assert config.data.train_limit == 10_000
  assert config.data.eval_limit == 1_000
  assert variant.train_eval_examples == 1_000
  assert config.optim.warmup_epochs == pytest.approx(30 / 312)
  assert config.optim.grad_clip_norm == 2.0
  text = degradation.BUDGETS['cpu'].describe()
  assert '300 steps of 32 images (9,600 images, 0.96 epochs)' in text
  assert 'first 10,000 images' in text
  full = degradation.variants('full', 1)[1].config
  assert full.train.num_train_steps == -1
  assert full.train.num_epochs == 164.0
  assert full.data.train_limit == 0
  assert full.optim.grad_clip_norm == 0.0
