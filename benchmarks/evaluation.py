"""The evaluation report: FLAME beside every baseline, on Fashion-MNIST and the other tasks.

  python -m benchmarks.evaluation --processes=2   # every section, in order
  python -m benchmarks.evaluation --report_only      # rewrite the report from what finished
  python -m benchmarks.evaluation --sections=adaptive --only_adaptive_report
      # run one section of the attackers who know the defense; rewrite only that section

Each cell is one run of the training binary (`python -m experiments.run`) in
its own process, into results/evaluation/<task>/<attack>/<defense>/<variant>/seed<k>/.
A finished cell (summary.json) is not run again and an interrupted one continues
from its checkpoint, so the evaluation resumes where it stopped. The sections of
the report:

  main    fashion_mnist (Dirichlet alpha 0.5, 30% malicious, 10 of 50 clients per
          round) x 4 attacks x every defense, seed 0; and the no-attack runs.
  tasks   digits and N-BaIoT (../shared/data) under constrain-and-scale, every defense;
          Shakespeare's trigger phrase with none, FLAME (both paths) and Multi-Krum.
  malicious_fraction, dirichlet_alpha, clients_per_round
          sweeps: FLAME, none and Multi-Krum under constrain-and-scale.
  seeds   seeds 1 and 2 of the none and FLAME cells (mean +- std over 3 seeds).
  task_attacks
          digits under PGD (scaled), DBA and data poisoning, N-BaIoT under PGD
          (scaled) and data poisoning, every defense.

Cells run in `run_order` (most needed first). The report (docs/evaluation.md
and PNG plots beside it) is rewritten after every finished cell, so it always
shows what has been measured so far.
"""

import collections
import concurrent.futures
import os
import pathlib
import threading
import time

from absl import app
from absl import flags

from benchmarks import adaptive
from benchmarks import cells as cells_lib
from benchmarks import training_runs
from benchmarks.cells import BASE
from benchmarks.cells import Cell
from benchmarks.cells import DEFENSE_FLAGS
from benchmarks.cells import FILTERING
from benchmarks.cells import read_cell
from benchmarks.cells import run_cell
from benchmarks.cells import variant_name
from experiments import plots

DOCS = cells_lib.REPO / 'docs'
MAIN_ATTACKS = ('constrain_and_scale', 'pgd_scaled', 'dba', 'data_poisoning')
SWEEP_DEFENSES = tuple(d for d in ('none', 'flame', 'multi_krum', 'flame_hardened')
                       if d in DEFENSE_FLAGS)
SEED_DEFENSES = tuple(d for d in ('none', 'flame', 'flame_hardened') if d in DEFENSE_FLAGS)
SWEEPS = collections.OrderedDict([
    ('malicious_fraction', ((0.1, 0.2, 0.4, 0.49), 0.3)),
    ('dirichlet_alpha', ((0.1, 1.0, 100.0), 0.5)),
    ('clients_per_round', ((20, 50), 10)),
])
SECTIONS = ('main', 'tasks', 'malicious_fraction', 'seeds', 'dirichlet_alpha',
            'clients_per_round', 'task_attacks') + adaptive.SECTIONS
# The attacks of the other tasks' tables: the 'tasks' section runs constrain-and-scale,
# 'task_attacks' the rest. N-BaIoT's trigger has one part, so DBA would be data poisoning.
TASK_ATTACKS = collections.OrderedDict([
    ('digits', MAIN_ATTACKS),
    ('nbaiot', ('constrain_and_scale', 'pgd_scaled', 'data_poisoning')),
    ('shakespeare', ('constrain_and_scale',)),
])
FLAGS = flags.FLAGS
ADAPTIVE_BEGIN = '<!-- begin: attackers who know the defense (benchmarks/adaptive.py) -->'
ADAPTIVE_END = '<!-- end: attackers who know the defense -->'
GEOMETRIES = "## FLAME's geometries under constrain-and-scale (seed 0)"

def cells_of(section: str) -> list:
  """The cells of one section, most important first."""
  if section == 'main':
    cells = [Cell('fashion_mnist', 'none', d, BASE, 0) for d in ('none', 'flame', 'flame_bare')]
    return cells + [Cell('fashion_mnist', a, d, BASE, 0)
                    for a in MAIN_ATTACKS for d in DEFENSE_FLAGS]
  if section == 'seeds':
    return [Cell('fashion_mnist', a, d, BASE, s) for a in ('none',) + MAIN_ATTACKS
            for s in (1, 2) for d in SEED_DEFENSES if not (a == 'none' and d != 'none')]
  if section in adaptive.SECTIONS:
    return adaptive.cells_of(section)
  if section in SWEEPS:
    return [Cell('fashion_mnist', 'constrain_and_scale', d, variant_name(section, v), 0)
            for v in SWEEPS[section][0] for d in SWEEP_DEFENSES]
  if section == 'tasks':
    cells = [Cell(t, a, d, BASE, 0) for t in ('digits', 'nbaiot')
             for a, ds in (('none', ('none',)), ('constrain_and_scale', DEFENSE_FLAGS))
             for d in ds]
    return cells + [Cell('shakespeare', a, d, BASE, 0) for a, d in (
        ('none', 'none'), ('constrain_and_scale', 'none'), ('constrain_and_scale', 'flame'),
        ('constrain_and_scale', 'flame_bare'), ('constrain_and_scale', 'multi_krum'))]
  if section == 'task_attacks':
    return [Cell(t, a, d, BASE, 0) for t in ('digits', 'nbaiot') for a in TASK_ATTACKS[t]
            if a != 'constrain_and_scale' for d in DEFENSE_FLAGS]
  raise ValueError(f'--sections: unknown section {section!r}; known: {SECTIONS}.')


def run_order(sections) -> list:
  """The cells of `sections`, each once, in the order they run: what the report needs most
  first, since a 2-core machine may not finish them all. The main table's ranks are below;
  `adaptive.priority` gives the ranks of "Attackers who know the defense", interleaved."""
  rank = {'none': 1, 'constrain_and_scale': 1, 'dba': 4, 'pgd_scaled': 5, 'data_poisoning': 10}

  def priority(section, cell):
    if section == 'main':
      return rank[cell.attack]
    if section == 'seeds':
      return 9 if cell.attack in ('none', 'constrain_and_scale') else 14
    if section in adaptive.SECTIONS:
      return adaptive.priority(section, cell)
    return dict(tasks=3, malicious_fraction=8, dirichlet_alpha=13, clients_per_round=15,
                task_attacks=16)[section]

  ranked = sorted((priority(s, c), i, c) for i, (s, c) in
                  enumerate((s, c) for s in sections for c in cells_of(s)))
  return list(collections.OrderedDict((c, None) for _, _, c in ranked))


def main_table(results, task: str = 'fashion_mnist', attacks=MAIN_ATTACKS) -> list:
  """Defenses x attacks: MA / BA (mean ± std where seeds 1 and 2 ran), then TPR / TNR."""
  lines = ['| defense | ' + ' | '.join(f'{a} MA / BA' for a in attacks) +
           ' | ' + ' | '.join(f'{a} TPR / TNR' for a in attacks) + ' |',
           '|---|' + '---|' * (2 * len(attacks))]
  for d in DEFENSE_FLAGS:
    if not any(results.get(Cell(task, a, d, BASE, 0)) for a in attacks):
      continue
    row = [d]
    for a in attacks:
      c = Cell(task, a, d, BASE, 0)
      row.append(f"{cells_lib.seeded(results, c, 'main_accuracy')} / "
                 f"{cells_lib.seeded(results, c, 'backdoor_accuracy')}")
    for a in attacks:
      r = results.get(Cell(task, a, d, BASE, 0))
      row.append('-' if d not in FILTERING or not r else
                 ' / '.join(cells_lib.rates_text(d, r['tpr'], r['tnr'])))
    lines.append('| ' + ' | '.join(row) + ' |')
  return lines


def detail_table(results, cells) -> list:
  lines = ['| cell | MA | BA | BA over attack rounds | TPR | TNR | rounds with >= half '
           'attackers | pretrain MA | s |', '|---|---|---|---|---|---|---|---|---|']
  for c in cells:
    r = results.get(c)
    if not r:
      continue
    name = f'{c.attack} / {c.defense}' + ('' if c.variant == BASE else f' / {c.variant}') + (
        f' / seed {c.seed}')
    tpr, tnr = cells_lib.rates_text(c.defense, r['tpr'], r['tnr'])
    lines.append(f"| {name} | {cells_lib.pct(r['main_accuracy'])} | "
                 f"{cells_lib.pct(r['backdoor_accuracy'])} | {cells_lib.pct(r['attack_ba'])} | "
                 f"{tpr} | {tnr} | {r['half_rounds']} of {r['attack_rounds']} | "
                 f"{cells_lib.pct(r['pretrain_ma'])} | {r['seconds']:.0f} |")
  return lines


def targets(results) -> list:
  """The issue's targets for default FLAME, checked cell by cell (seed 0), then on the
  means over seeds where seeds 1 and 2 ran."""
  clean_cell = Cell('fashion_mnist', 'none', 'none', BASE, 0)
  clean = results.get(clean_cell)
  if not clean:
    return ['(the no-attack run has not finished)']
  lines = [f"Reference, no attack and no defense: MA {cells_lib.pct(clean['main_accuracy'])}, BA "
           f"{cells_lib.pct(clean['backdoor_accuracy'])} (the floor of the backdoor metric).", '',
           '| cell | BA - clean BA | MA - clean MA | TPR | TNR | met |',
           '|---|---|---|---|---|---|']
  cells = [Cell('fashion_mnist', a, 'flame', BASE, 0) for a in ('constrain_and_scale',
                                                                'pgd_scaled', 'dba')]
  cells += [Cell('fashion_mnist', 'constrain_and_scale', 'flame', variant_name(
      'malicious_fraction', f), 0) for f in (0.1, 0.2, 0.4)]
  rows = [(c, results.get(c), clean, '') for c in cells]
  # Where seeds 1 and 2 ran: the same check on the means over seeds (clean: over its seeds).
  clean_mean = {k: cells_lib.over_seeds(results, clean_cell, k)[0]
                for k in ('main_accuracy', 'backdoor_accuracy')}
  for c in cells:
    count = cells_lib.over_seeds(results, c, 'backdoor_accuracy')[2]
    if count > 1:
      mean = {k: cells_lib.over_seeds(results, c, k)[0]
              for k in ('main_accuracy', 'backdoor_accuracy', 'tpr', 'tnr')}
      rows.append((c, mean, clean_mean, f'mean of {count} seeds'))
  for c, r, ref, note in rows:
    if not r:
      continue
    dba = r['backdoor_accuracy'] - ref['backdoor_accuracy']
    dma = r['main_accuracy'] - ref['main_accuracy']
    met = [dba <= 0.02, dma >= -0.02, (r['tpr'] or 0) >= 0.9, (r['tnr'] or 0) >= 0.8]
    label = (c.attack + ('' if c.variant == BASE else f' ({c.variant})') +
             (f' ({note})' if note else ''))
    missed = [name for name, ok in zip(('BA', 'MA', 'TPR', 'TNR'), met) if not ok]
    lines.append(f"| {label} | {100 * dba:+.1f} | {100 * dma:+.1f} | {cells_lib.pct(r['tpr'])} | "
                 f"{cells_lib.pct(r['tnr'])} | {'no: ' + ', '.join(missed) if missed else 'yes'} |")
  quiet = results.get(Cell('fashion_mnist', 'none', 'flame', BASE, 0))
  if quiet:
    admitted = cells_lib.mean_of([r.get('num_admitted') for r in quiet['rounds']])
    per_round = cells_lib.mean_of([r.get('num_clients') for r in quiet['rounds']])
    lines += ['', f'With no attacker, FLAME admitted {admitted:.1f} of {per_round:.0f} clients a '
              f"round on average (TNR {cells_lib.pct(quiet['tnr'])}): non-IID benign models are "
              'spread, and the majority cluster is then about its minimum size, n // 2 + 1. So '
              'the TNR target is out of reach when few attackers are drawn.']
  return lines


def plot_sweeps(results, path) -> bool:
  plt = plots.pyplot()
  fig, axes = plt.subplots(2, len(SWEEPS), figsize=(4 * len(SWEEPS), 6), squeeze=False)
  drawn = False
  for col, (axis, (values, base_value)) in enumerate(SWEEPS.items()):
    xs = sorted(values + (base_value,))
    for d in SWEEP_DEFENSES:
      points = []
      for x in xs:
        variant = BASE if x == base_value else variant_name(axis, x)
        r = results.get(Cell('fashion_mnist', 'constrain_and_scale', d, variant, 0))
        if r:
          points.append((x, r['backdoor_accuracy'], r['main_accuracy']))
      if points:
        drawn = True
        px = [p[0] for p in points]
        axes[0][col].plot(px, [p[1] for p in points], marker='o', label=d)
        axes[1][col].plot(px, [p[2] for p in points], marker='o', label=d)
    for row, metric in enumerate(('BA (final)', 'MA (final)')):
      axes[row][col].set(xlabel=axis, ylabel=metric, ylim=(-0.02, 1.02))
      if axis == 'dirichlet_alpha':
        axes[row][col].set_xscale('log')
    axes[0][col].legend(fontsize=7)
  fig.suptitle('fashion_mnist, constrain-and-scale: FLAME against none and Multi-Krum')
  return cells_lib.save_if_drawn(plt, fig, path, drawn)


def plot_main_rounds(results, path) -> bool:
  plt = plots.pyplot()
  fig, axes = plt.subplots(1, len(MAIN_ATTACKS), figsize=(4 * len(MAIN_ATTACKS), 3.5),
                           squeeze=False)
  drawn = False
  for col, a in enumerate(MAIN_ATTACKS):
    for d in DEFENSE_FLAGS:
      r = results.get(Cell('fashion_mnist', a, d, BASE, 0))
      if r:
        drawn = True
        axes[0][col].plot([x['round'] for x in r['rounds']],
                          [x['backdoor_accuracy'] for x in r['rounds']], marker='.', label=d)
    axes[0][col].set(title=a, xlabel='round', ylabel='BA', ylim=(-0.02, 1.02))
  axes[0][0].legend(fontsize=6)
  return cells_lib.save_if_drawn(plt, fig, path, drawn)


def task_table(results, task) -> list:
  """A task's main table (seed 0), then its cells with BA over the attack rounds."""
  clean = results.get(Cell(task, 'none', 'none', BASE, 0))
  lines = [f"No attack, no defense: MA {cells_lib.pct(clean and clean['main_accuracy'])}, BA "
           f"{cells_lib.pct(clean and clean['backdoor_accuracy'])}.", '']
  lines += main_table(results, task, TASK_ATTACKS[task]) + ['']
  return lines + detail_table(results, [Cell(task, a, d, BASE, 0) for a in TASK_ATTACKS[task]
                                        for d in DEFENSE_FLAGS])


# The paper's constrain-and-scale FLAME results (Nguyen et al. 2022), as the issue quotes them:
# (dataset, BA with FLAME, MA with FLAME, MA without attack), in %.
PAPER_FLAME = (('CIFAR-10', 0.0, 91.9, 92.2), ('IoT', 0.0, 99.8, 100.0),
               ('Reddit', 0.0, 22.3, 22.7))
REPORT_TASKS = ('fashion_mnist', 'digits', 'nbaiot', 'shakespeare')


def paper_side_by_side(results) -> list:
  lines = ['| paper: dataset | BA | MA | MA, no attack | here: task | BA | MA | MA, no attack, '
           'no defense |', '|---|---|---|---|---|---|---|---|']
  ours = []
  for task in REPORT_TASKS:
    r = results.get(Cell(task, 'constrain_and_scale', 'flame', BASE, 0))
    clean = results.get(Cell(task, 'none', 'none', BASE, 0))
    if r:
      ours.append((task, cells_lib.pct(r['backdoor_accuracy']), cells_lib.pct(r['main_accuracy']),
                   cells_lib.pct(clean and clean['main_accuracy'])))
  for i in range(max(len(PAPER_FLAME), len(ours))):
    paper = PAPER_FLAME[i] if i < len(PAPER_FLAME) else None
    left = [paper[0]] + [f'{v:.1f}' for v in paper[1:]] if paper else ['', '', '', '']
    right = list(ours[i]) if i < len(ours) else ['', '', '', '']
    lines.append('| ' + ' | '.join(left + right) + ' |')
  return lines


def bare_path_table(results) -> list:
  """FLAME's geometries side by side under constrain-and-scale (seed 0)."""
  lines = ['| geometry | ' + ' | '.join(f'{t} TPR / TNR / BA' for t in REPORT_TASKS[:3]) + ' |',
           '|---|' + '---|' * 3]
  names = dict(flame='cosine between models (the paper; default with G)',
               flame_bare='Euclidean between updates (bare default)',
               flame_bare_cosine='cosine between updates (the bare path before)')
  for d, name in names.items():
    row = [name]
    for task in REPORT_TASKS[:3]:
      r = results.get(Cell(task, 'constrain_and_scale', d, BASE, 0))
      row.append('-' if not r else
                 f"{cells_lib.pct(r['tpr'])} / {cells_lib.pct(r['tnr'])} / "
                 f"{cells_lib.pct(r['backdoor_accuracy'])}")
    lines.append('| ' + ' | '.join(row) + ' |')
  return lines


def write_report(output_dir, path) -> None:
  """docs/evaluation.md and its plots from every finished cell."""
  all_cells = run_order(SECTIONS)
  results = {c: read_cell(output_dir, c) for c in all_cells}
  done = [c for c in all_cells if results[c]]
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  codes = sorted({results[c]['code'] for c in done if results[c]['code']})
  seconds = sum(results[c]['seconds'] for c in done)
  lines = ['# Evaluation: FLAME beside the baselines', '',
           'Generated by `python -m benchmarks.evaluation` (rewritten after every finished '
           f'cell): {len(done)} of {len(all_cells)} cells finished, code version(s) '
           f"{', '.join(codes) or '-'}, {seconds / 60:.0f} min of training loops in all "
           '(2-core machine, 2 cells at a time). Per-cell flags: `cell.json` in each cell '
           f'folder under `{output_dir}`; the task flags are `training_runs.TASK_FLAGS` in the '
           'code.', '',
           '## Setting', '',
           'fashion_mnist: 12,000 training images over 50 clients (Dirichlet alpha 0.5), the '
           'EMNIST CNN (1.66 M parameters), 5 rounds of clean FedAvg first (cached, shared by '
           'the cells of a seed), then 10 rounds of 10 clients each, attacks from round 3; 30% '
           'of the clients are malicious; MA and BA on 3,000 test images (BA: triggered images '
           'of other classes classified as the target). `flame` is the default (the paper: '
           'cosine between local models), `flame_bare` is `FlameFactory()` on updates alone '
           '(Euclidean distance), `flame_bare_cosine` the update-space cosine it replaced. '
           'constrain-and-scale and pgd_scaled scale by model replacement shared by the expected '
           '3 attackers (gamma = 10/3).', '',
           '## Main table (fashion_mnist, alpha 0.5, 30% malicious)', '',
           'MA / BA in % after the last round; `(3)` marks a mean ± std over 3 seeds. TPR / TNR '
           '(malicious rejected, benign admitted) averaged over attack rounds, seed 0.', '']
  lines += main_table(results)
  lines += adaptive_block(results, path)
  lines += ['', GEOMETRIES, '',
            'TPR and TNR averaged over attack rounds, BA after the last round (%).', '']
  lines += bare_path_table(results)
  lines += ['', "## Side by side with the paper's constrain-and-scale FLAME column", '',
            'The paper trains far longer from well-trained models on other data sets, so '
            'only the shape compares: BA at the floor, MA close to the no-attack MA.', '']
  lines += paper_side_by_side(results)
  lines += ['', '## Targets for default FLAME', '']
  lines += targets(results)
  lines += ['', '## Per cell: BA over attack rounds and rounds where attackers were half or more',
            '', 'With 10 clients per round drawn from a 30%-malicious population some rounds '
            'have 5 or more attackers; no majority-cluster filter can reject them then.', '']
  lines += detail_table(results, [c for s in ('main', 'seeds') for c in cells_of(s)])
  if plot_main_rounds(results, path.with_name('evaluation_rounds.png')):
    lines += ['', '![BA per round](evaluation_rounds.png)']
  lines += ['', '## Sweeps under constrain-and-scale (fashion_mnist, seed 0)', '']
  lines += detail_table(results, [c for s in SWEEPS for c in cells_of(s)])
  if plot_sweeps(results, path.with_name('evaluation_sweeps.png')):
    lines += ['', '![sweeps](evaluation_sweeps.png)']
  for task in TASK_ATTACKS:
    lines += ['', f'## {task} (seed 0)', '']
    lines += task_table(results, task)
  with open(str(path) + '.tmp', 'w') as f:
    f.write('\n'.join(lines) + '\n')
  os.replace(str(path) + '.tmp', path)


def adaptive_block(results, path) -> list:
  """The headline and the section 'Attackers who know the defense', between the markers that
  `write_adaptive_section` finds again."""
  headline = adaptive.headline(results)
  return (['', ADAPTIVE_BEGIN] + ([headline, ''] if headline else []) +
          adaptive.report(results, path) + [ADAPTIVE_END])


def write_adaptive_section(output_dir, path) -> None:
  """Rewrites only the section 'Attackers who know the defense' (and its headline) in an
  existing report, keeping the other sections as they were last measured; where the report
  has no such section yet, it goes before FLAME's geometries (or at the end)."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f'--only_adaptive_report: {path} does not exist; run the whole '
                            'report first.')
  cells = [c for s in adaptive.SECTIONS for c in cells_of(s)]
  results = {c: read_cell(output_dir, c) for c in cells}
  block = '\n'.join(adaptive_block(results, path)[1:]) + '\n'
  text = path.read_text()
  if ADAPTIVE_BEGIN in text and ADAPTIVE_END in text:
    start, end = text.index(ADAPTIVE_BEGIN), text.index(ADAPTIVE_END) + len(ADAPTIVE_END) + 1
  else:
    start = end = (text.index(GEOMETRIES) if GEOMETRIES in text else len(text))
  with open(str(path) + '.tmp', 'w') as f:
    f.write(text[:start] + block + ('\n' if end == start else '') + text[end:])
  os.replace(str(path) + '.tmp', path)


def define_flags() -> None:
  """The binary's flags (defined only when run as a program: the defense grid, imported
  in the same test process, has flags of the same names)."""
  flags.DEFINE_list('sections', list(SECTIONS), f'Which of {SECTIONS} to run.')
  flags.DEFINE_integer('processes', 2, 'Cells run at once.', lower_bound=1)
  flags.DEFINE_string('output_dir', 'results/evaluation', 'Where the cells go.')
  flags.DEFINE_string('report', str(DOCS / 'evaluation.md'),
                      'The Markdown report (plots go beside it).')
  flags.DEFINE_bool('report_only', False, 'Only rewrite the report.')
  flags.DEFINE_bool('only_adaptive_report', False,
                    "Rewrite only the section 'Attackers who know the defense' of --report, "
                    'keeping its other sections as they were last measured.')


def main(argv):
  del argv
  for s in FLAGS.sections:
    cells_of(s)  # names the bad section
  rewrite = write_adaptive_section if FLAGS.only_adaptive_report else write_report
  if not FLAGS.report_only:
    for section in set(FLAGS.sections) & {'tasks', 'task_attacks'}:
      if not training_runs.SHARED_DATA.exists():
        raise app.UsageError(f'--sections={section} needs {training_runs.SHARED_DATA}, which '
                             'is absent.')
    cells = run_order(FLAGS.sections)
    print(f'{len(cells)} cells, {FLAGS.processes} at a time -> {FLAGS.output_dir}', flush=True)
    lock = threading.Lock()
    with concurrent.futures.ThreadPoolExecutor(FLAGS.processes) as pool:
      futures = {pool.submit(run_cell, FLAGS.output_dir, c): c for c in cells}
      for i, future in enumerate(concurrent.futures.as_completed(futures), 1):
        seconds, status = future.result()
        c = futures[future]
        print(f'[{i}/{len(cells)}] {time.strftime("%H:%M:%S")} {c.task}/{c.attack}/{c.defense}/'
              f'{c.variant}/seed{c.seed}: {status} ({seconds:.0f}s)', flush=True)
        with lock:
          rewrite(FLAGS.output_dir, FLAGS.report)
  rewrite(FLAGS.output_dir, FLAGS.report)
  print(f'report: {FLAGS.report}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
