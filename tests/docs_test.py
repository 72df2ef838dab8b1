"""The README stays a user's page (at most 250 lines) and every link between the pages lands."""

import pathlib
import re
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PAGES = [REPO / 'README.md', REPO / 'CHANGELOG.md', *sorted((REPO / 'docs').glob('*.md'))]
LINK = re.compile(r'\]\(([^)\s]+)\)')


def anchors(page: pathlib.Path) -> set:
  """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to '-'."""
  text = re.sub(r'```.*?```', '', page.read_text(), flags=re.S)
  headings = re.findall(r'^#+ (.+)$', text, re.M)
  return {re.sub(r'[^\w\- ]', '', h.strip().lower()).replace(' ', '-') for h in headings}


def test_the_readme_is_at_most_250_lines():
  assert len((REPO / 'README.md').read_text().splitlines()) <= 250


def test_the_readme_keeps_one_headline_block():
  readme = (REPO / 'README.md').read_text()
  assert readme.count('<!-- headline:start -->') == 1 == readme.count('<!-- headline:end -->')
  assert readme.index('<!-- headline:start -->') < readme.index('<!-- headline:end -->')


@pytest.mark.parametrize('page', PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_lands_on_a_file_and_heading(page):
  broken = []
  for target in LINK.findall(page.read_text()):
    if re.match(r'[a-z]+:', target):
      continue  # http(s), mailto: not checked offline
    path, _, anchor = target.partition('#')
    linked = (page.parent / path).resolve() if path else page
    if not linked.exists():
      broken.append(target)
    elif anchor and linked.suffix == '.md' and anchor not in anchors(linked):
      broken.append(target)
  assert not broken, f'{page.name}: {broken}'


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parent
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
