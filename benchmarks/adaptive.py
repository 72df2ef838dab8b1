"""The report section "Attackers who know the defense": its cells, tables and plot.

Setting: fashion_mnist as the main table (Dirichlet alpha 0.5, 30% malicious),
with 20 clients per round (`TWENTY`; no round then draws half attackers) and
with the main table's 10. Attacks: the five that know the defense and the
four that ignore it; defenses: none, FLAME (both paths), Multi-Krum,
FoolsGold, FreqFed, Multi-Metrics and the hardened FLAME, where registered.
Seeds 0-2 for none, flame and flame_hardened at 20 clients per round, seed 0
elsewhere. Plus BA against stay_small's radius fraction, and digits and
N-BaIoT under stay_small.
"""

from benchmarks import cells as cells_lib
from benchmarks.cells import BASE
from benchmarks.cells import Cell
from benchmarks.cells import DEFENSE_FLAGS
from experiments import attacks as attacks_lib
from experiments import config as config_lib
from experiments import plots

ADAPTIVE = ('stay_small', 'neurotoxin', 'a3fl', '3dfed', 'defense_in_the_loop')
IGNORANT = ('constrain_and_scale', 'pgd_scaled', 'dba', 'data_poisoning')
ATTACKS = ADAPTIVE + IGNORANT
DEFENSES = tuple(d for d in ('none', 'flame', 'flame_bare', 'multi_krum', 'foolsgold', 'freqfed',
                             'multi_metrics', 'flame_hardened') if d in DEFENSE_FLAGS)
SEEDED = tuple(d for d in ('none', 'flame', 'flame_hardened') if d in DEFENSE_FLAGS)
TWENTY = 'clients_per_round=20'
FRACTIONS = (0.25, 0.5, 1.0)  # stay_small's --radius_fraction besides its default
DEFAULT_FRACTION = config_lib.ExperimentConfig().radius_fraction  # run by the main cells
FRACTION_DEFENSES = tuple(d for d in ('none', 'flame', 'multi_krum', 'flame_hardened')
                          if d in DEFENSE_FLAGS)
SECTIONS = ('adaptive', 'adaptive_seeds', 'stay_small_fraction', 'adaptive_ten',
            'adaptive_tasks')
# Published FLAME numbers under the same attack (Multi-Metrics, ICCV 2023, Table 1; MA / BA %).
PUBLISHED = (('dba', 'Multi-Metrics: FLAME, DBA, CIFAR-10', 76.78, 37.24),
             ('dba', 'Multi-Metrics: FLAME, DBA, EMNIST', 97.12, 17.38),
             ('pgd_scaled', 'Multi-Metrics: FLAME, PGD, CIFAR-10', 81.24, 0.56),
             ('pgd_scaled', 'Multi-Metrics: FLAME, PGD, EMNIST', 99.39, 0.00),
             ('constrain_and_scale', 'Multi-Metrics: FLAME, model replacement, CIFAR-10',
              80.58, 0.56),
             ('constrain_and_scale', 'Multi-Metrics: FLAME, model replacement, EMNIST',
              99.39, 0.00))
PUBLISHED_EDGE_CASE = 'Multi-Metrics also reports FLAME under edge-case PGD at BA 5.12 ' \
    '(CIFAR-10) and 13.00 (EMNIST); no edge-case attack is run here.'


def fraction_variant(fraction: float) -> str:
  return f'{TWENTY},radius_fraction={fraction}'


def fraction_cells(defense: str) -> list:
  """(fraction, cell) of stay_small against `defense` (seed 0) at every swept radius fraction
  and the default, which the section's main cells ran."""
  return [(f, Cell('fashion_mnist', 'stay_small', defense,
                   TWENTY if f == DEFAULT_FRACTION else fraction_variant(f), 0))
          for f in sorted(FRACTIONS + (DEFAULT_FRACTION,))]


def cells_of(section: str) -> list:
  """The cells of one of this report's sections."""
  fm = 'fashion_mnist'
  if section == 'adaptive':
    quiet = [Cell(fm, 'none', d, TWENTY, 0) for d in SEEDED]
    return quiet + [Cell(fm, a, d, TWENTY, 0) for a in ATTACKS for d in DEFENSES]
  if section == 'adaptive_seeds':
    return [Cell(fm, a, d, TWENTY, s) for s in (1, 2) for a in ('none',) + ATTACKS
            for d in SEEDED]
  if section == 'stay_small_fraction':
    return [Cell(fm, 'stay_small', d, fraction_variant(f), 0) for f in FRACTIONS
            for d in FRACTION_DEFENSES]
  if section == 'adaptive_ten':  # the ignorant attacks at 10 per round are the main table's
    return [Cell(fm, a, d, BASE, 0) for a in ADAPTIVE for d in DEFENSES]
  if section == 'adaptive_tasks':
    return [Cell(t, a, d, BASE, 0) for t in ('digits', 'nbaiot')
            for a, ds in (('none', ('none',)), ('stay_small', DEFENSES)) for d in ds]
  raise ValueError(f'unknown section {section!r}')


def priority(section: str, cell: Cell) -> int:
  """Run order rank (lower first; the evaluation's ranks interleave with these): seed 0 against
  none, FLAME and the hardened FLAME; seeds 1 and 2 with no attack and under stay_small; the
  other defenses under stay_small and neurotoxin; stay_small's radius; the other tasks; the
  other defenses under the other attacks; the other seeds; 10 per round."""
  if section == 'adaptive':
    if cell.defense in SEEDED:
      return 0
    return 2 if cell.attack in ('stay_small', 'neurotoxin') else 5
  if section == 'adaptive_seeds' and cell.attack in ('none', 'stay_small'):
    return 1
  return dict(adaptive_seeds=6, stay_small_fraction=3, adaptive_ten=11,
              adaptive_tasks=4)[section]


def _round_metric(rounds, key, attacked_only=True):
  return [r.get(key) for r in rounds if r.get('attacking') or not attacked_only]


def max_attack_ba(result):
  values = [v for v in _round_metric(result['rounds'], 'backdoor_accuracy') if v is not None]
  return max(values) if values else None


def _with_max(results):
  """results with `max_ba` (highest BA in an attack round) in every finished cell."""
  return {c: dict(r, max_ba=max_attack_ba(r)) for c, r in results.items() if r}


def _defense_grid(results, variant: str, attacks, header: str, format_cell) -> list:
  """Defense x attack table of fashion_mnist cells (seed 0, others averaged where they ran);
  `format_cell(cell, defense)` writes a finished cell; rows with none finished are left out."""
  lines = ['| defense | ' + ' | '.join(header.format(a) for a in attacks) + ' |',
           '|---|' + '---|' * len(attacks)]
  for d in DEFENSES:
    row = [d]
    for a in attacks:
      c = Cell('fashion_mnist', a, d, variant, 0)
      row.append(format_cell(c, d) if results.get(c) else '-')
    if any(x != '-' for x in row[1:]):
      lines.append('| ' + ' | '.join(row) + ' |')
  return lines


def ba_table(results, variant: str, attacks=ATTACKS) -> list:
  """Final BA (mean ± std over the seeds that ran) / highest BA in an attack round (mean)."""
  results = _with_max(results)

  def cell_text(c, unused_defense):
    high, _, _ = cells_lib.over_seeds(results, c, 'max_ba')
    return f"{cells_lib.seeded(results, c, 'backdoor_accuracy')} / {cells_lib.pct(high)}"

  return _defense_grid(results, variant, attacks, '{}', cell_text)


def rates_table(results, variant: str, attacks=ATTACKS) -> list:
  """TPR / TNR averaged over the attack rounds (and seeds), and MA after the last round."""

  def cell_text(c, defense):
    tpr, tnr, ma = (cells_lib.over_seeds(results, c, k)[0]
                    for k in ('tpr', 'tnr', 'main_accuracy'))
    return ' / '.join(cells_lib.rates_text(defense, tpr, tnr) + (cells_lib.pct(ma),))

  return _defense_grid(results, variant, attacks, '{} TPR / TNR / MA', cell_text)


def per_round_table(results, defense: str) -> list:
  """TPR / TNR in every attack round (seed 0, 20 clients per round) for one defense."""
  lines = [f'| {defense}: attack | rounds: TPR / TNR (attackers in the round) |', '|---|---|']
  for a in ATTACKS:
    r = results.get(Cell('fashion_mnist', a, defense, TWENTY, 0))
    if not r:
      continue
    parts = [f"r{x['round']}: {cells_lib.pct(x.get('tpr'))} / {cells_lib.pct(x.get('tnr'))} "
             f"({x.get('num_malicious', 0):.0f})" for x in r['rounds'] if x.get('attacking')]
    lines.append(f"| {a} | {'; '.join(parts)} |")
  return lines


def knowledge_table() -> list:
  """What every attacker reads, from the attack registry."""
  lines = ['| attack | what it does | what the attacker reads |', '|---|---|---|']
  for name in ATTACKS:
    spec = attacks_lib.spec(name)
    lines.append(f'| `{name}` | {spec.help} | {spec.knows} |')
  return lines


def implant_check(results) -> list:
  """Each attack without a defense (20 per round, seeds that ran): BA >= 80%?"""
  lines = ['| attack | BA without a defense, final | highest in an attack round | '
           'implants (>= 80%) |', '|---|---|---|---|']
  results = _with_max(results)
  for a in ATTACKS:
    c = Cell('fashion_mnist', a, 'none', TWENTY, 0)
    if not results.get(c):
      continue
    final, _, _ = cells_lib.over_seeds(results, c, 'backdoor_accuracy')
    high, _, _ = cells_lib.over_seeds(results, c, 'max_ba')
    lines.append(f"| {a} | {cells_lib.seeded(results, c, 'backdoor_accuracy')} | "
                 f"{cells_lib.pct(high)} | {'yes' if final >= 0.8 else 'no'} |")
  return lines


def published_table(results) -> list:
  """FLAME here (seed 0, 10 and 20 per round) beside published FLAME numbers."""
  lines = ['| published | MA / BA | here: FLAME, fashion_mnist | 10 per round MA / BA | '
           '20 per round MA / BA |', '|---|---|---|---|---|']
  for attack, source, ma, ba in PUBLISHED:
    here = []
    for variant in (BASE, TWENTY):
      r = results.get(Cell('fashion_mnist', attack, 'flame', variant, 0))
      here.append('-' if not r else
                  f"{cells_lib.pct(r['main_accuracy'])} / {cells_lib.pct(r['backdoor_accuracy'])}")
    lines.append(f'| {source} | {ma:.1f} / {ba:.1f} | {attack} | {here[0]} | {here[1]} |')
  return lines + ['', PUBLISHED_EDGE_CASE]


def hardened_targets(results) -> list:
  """Issue 16's targets for flame_hardened (20 per round, means over the seeds that ran)."""
  fm = 'fashion_mnist'
  clean = Cell(fm, 'none', 'none', TWENTY, 0)
  floor, _, _ = cells_lib.over_seeds(results, clean, 'backdoor_accuracy')
  clean_ma, _, _ = cells_lib.over_seeds(results, clean, 'main_accuracy')
  if floor is None:
    return ['(the no-attack run at 20 clients per round has not finished)']
  lines = [f'No attack, no defense (20 per round): MA {cells_lib.pct(clean_ma)}, BA '
           f'{cells_lib.pct(floor)}, the floor.', '',
           '| attack | flame_hardened BA | BA - floor | MA - clean MA | seeds | BA within 3 | '
           'MA within 2 |', '|---|---|---|---|---|---|---|']
  cases = [(a, Cell(fm, a, 'flame_hardened', TWENTY, 0)) for a in ATTACKS]
  cases += [(f'stay_small, fraction {f}',
             Cell(fm, 'stay_small', 'flame_hardened', fraction_variant(f), 0))
            for f in FRACTIONS]
  for label, c in cases:
    ba, _, count = cells_lib.over_seeds(results, c, 'backdoor_accuracy')
    ma, _, _ = cells_lib.over_seeds(results, c, 'main_accuracy')
    if ba is None:
      continue
    lines.append(f'| {label} | {cells_lib.pct(ba)} | {100 * (ba - floor):+.1f} | '
                 f'{100 * (ma - clean_ma):+.1f} | {count} | '
                 f"{'yes' if ba - floor <= 0.03 else 'no'} | "
                 f"{'yes' if ma - clean_ma >= -0.02 else 'no'} |")
  quiet = Cell(fm, 'none', 'flame_hardened', TWENTY, 0)
  tnr, _, count = cells_lib.over_seeds(results, quiet, 'tnr')
  flame_tnr, _, _ = cells_lib.over_seeds(results, quiet._replace(defense='flame'), 'tnr')
  if tnr is not None:
    lines += ['', f'With no attacker (20 per round, {count} seeds): flame_hardened TNR '
              f"{cells_lib.pct(tnr)} (target 80%: {'met' if tnr >= 0.8 else 'missed'}); "
              f'FLAME {cells_lib.pct(flame_tnr)}.']
  return lines


def plot_fractions(results, path) -> bool:
  """BA against stay_small's radius fraction (20 per round, seed 0)."""
  plt = plots.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
  drawn = False
  for d in FRACTION_DEFENSES:
    points = [(f, results[c]['backdoor_accuracy'], max_attack_ba(results[c]))
              for f, c in fraction_cells(d) if results.get(c)]
    if points:
      drawn = True
      xs = [p[0] for p in points]
      axes[0].plot(xs, [p[1] for p in points], marker='o', label=d)
      axes[1].plot(xs, [p[2] for p in points], marker='o', label=d)
  axes[0].set(title='final BA', xlabel='radius / own clean-update norm', ylabel='BA',
              ylim=(-0.02, 1.02))
  axes[1].set(title='highest BA in an attack round', xlabel='radius / own clean-update norm',
              ylim=(-0.02, 1.02))
  axes[0].legend(fontsize=7)
  return cells_lib.save_if_drawn(plt, fig, path, drawn)


def fraction_table(results) -> list:
  """The plot's numbers: final BA (TPR / TNR) against stay_small's radius fraction."""
  fractions = [f for f, _ in fraction_cells('none')]
  lines = ['| defense | ' + ' | '.join(f'fraction {f}' for f in fractions) + ' |',
           '|---|' + '---|' * len(fractions)]
  for d in FRACTION_DEFENSES:
    row = []
    for _, c in fraction_cells(d):
      r = results.get(c)
      if not r:
        row.append('-')
        continue
      row.append(cells_lib.pct(r['backdoor_accuracy']))
      if d in cells_lib.FILTERING:
        row[-1] += ' (' + ' / '.join(cells_lib.rates_text(d, r['tpr'], r['tnr'])) + ')'
    if any(x != '-' for x in row):
      lines.append(f"| {d} | {' | '.join(row)} |")
  return lines


def task_rows(results) -> list:
  lines = ['| task | defense | MA | BA | highest BA | TPR | TNR |', '|---|---|---|---|---|---|---|']
  for t in ('digits', 'nbaiot'):
    clean = results.get(Cell(t, 'none', 'none', BASE, 0))
    if clean:
      lines.append(f"| {t} | none, no attack | {cells_lib.pct(clean['main_accuracy'])} | "
                   f"{cells_lib.pct(clean['backdoor_accuracy'])} | - | - | - |")
    for d in DEFENSES:
      r = results.get(Cell(t, 'stay_small', d, BASE, 0))
      if r:
        tpr, tnr = cells_lib.rates_text(d, r['tpr'], r['tnr'])
        lines.append(f"| {t} | {d} | {cells_lib.pct(r['main_accuracy'])} | "
                     f"{cells_lib.pct(r['backdoor_accuracy'])} | "
                     f"{cells_lib.pct(max_attack_ba(r))} | {tpr} | {tnr} |")
  return lines


def headline(results) -> str:
  """Where FLAME fails against attackers who know it, and by how much (20 per round); then
  how the other defenses fare under the same attacks (seed 0)."""
  fm = 'fashion_mnist'
  final_ba = lambda a, d: cells_lib.over_seeds(results, Cell(fm, a, d, TWENTY, 0),
                                              'backdoor_accuracy')[0]
  parts, others = [], []
  for a in ADAPTIVE:
    if final_ba(a, 'flame') is not None:
      parts.append(f"{a} {cells_lib.pct(final_ba(a, 'none'))} / "
                   f"{cells_lib.pct(final_ba(a, 'flame'))} / "
                   f"{cells_lib.pct(final_ba(a, 'flame_hardened'))}")
    ran = [f'{d} {cells_lib.pct(final_ba(a, d))}' for d in DEFENSES
           if d not in SEEDED and final_ba(a, d) is not None]
    if ran:
      others.append(f"{a}: {', '.join(ran)}")
  if not parts:
    return ''
  text = ('Attackers who know the defense (fashion_mnist, 20 of 50 clients per round, 30% '
          'malicious; final BA in %, no defense / FLAME / hardened FLAME, mean over the seeds '
          'that ran): ' + '; '.join(parts) + '.')
  if others:
    text += ' The other defenses under the same attacks (final BA, seed 0): ' + \
        '; '.join(others) + '.'
  return text


def progress(results) -> str:
  """How many of this section's cells finished, on which code version(s)."""
  cells = set(c for s in SECTIONS for c in cells_of(s))
  done = [c for c in cells if results.get(c)]
  codes = sorted({results[c]['code'] for c in done if results[c].get('code')})
  minutes = sum(results[c]['seconds'] for c in done) / 60
  return (f'This section: {len(done)} of {len(cells)} cells finished, code version(s) '
          f"{', '.join(codes) or '-'}, {minutes:.0f} min of training loops; a '-' is a cell "
          'that has not run yet.')


def report(results, path) -> list:
  """The section's Markdown lines (and its plot beside `path`)."""
  lines = ['## Attackers who know the defense', '',
           'fashion_mnist as the main table (Dirichlet alpha 0.5, 30% of 50 clients '
           'malicious, 5 clean pretraining rounds, 10 rounds, attacks from round 3), with 20 '
           'clients per round (no round draws half attackers) and with 10. Each attacker '
           'knows what the table below says, never a benign client\'s update.', '',
           progress(results), '']
  lines += knowledge_table()
  lines += ['', '### Without a defense: does each attack implant?', '']
  lines += implant_check(results)
  lines += ['', '### Final BA / highest BA in an attack round (20 clients per round)', '',
            '`(3)` marks a mean ± std over seeds 0-2 (none, flame and flame_hardened); the '
            'highest BA is the mean over the same seeds.', '']
  lines += ba_table(results, TWENTY)
  lines += ['', '### TPR / TNR averaged over the attack rounds, and MA (20 clients per round)',
            '']
  lines += rates_table(results, TWENTY)
  lines += ['', '### Final BA / highest BA, 10 clients per round (seed 0)', '']
  ten = ba_table(results, BASE)
  lines += ten if len(ten) > 2 else ['(no cell at 10 clients per round has run yet)']
  lines += ['', '### TPR / TNR per attack round (seed 0, 20 clients per round)', '']
  for d in ('flame', 'flame_hardened'):
    if d in DEFENSES:
      lines += per_round_table(results, d) + ['']
  lines += ['### stay_small: BA against its radius (20 clients per round, seed 0)', '']
  if plot_fractions(results, path.with_name('evaluation_stay_small.png')):
    lines += ['![BA against the radius fraction](evaluation_stay_small.png)', '']
  lines += ['Final BA (TPR / TNR averaged over the attack rounds); the radius is the fraction '
            f"times the norm of the attacker's own clean update ({DEFAULT_FRACTION} is the "
            'default).', '']
  lines += fraction_table(results) + ['']
  lines += ['### digits and N-BaIoT under stay_small (seed 0)', '']
  lines += task_rows(results)
  lines += ['', '### Targets for flame_hardened (issue 16)', '']
  lines += hardened_targets(results)
  lines += ['', '### Beside published FLAME numbers', '']
  lines += published_table(results)
  return lines

