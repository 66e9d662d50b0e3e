"""Language filters: the built-in one (``--language CODE``, langid's bundled model, offline)
and the ``--language_filter module:function`` hook.

langid (1.1.6) was chosen over lingua-language-detector after measuring both on
WikiText lines (benchmarks/language.py): about 3x faster per CPU-second with one BLAS
thread (stages.Clean sets that), its model ships inside the wheel, and it is pure
Python + numpy. Only the first ``PREFIX_CHARS`` characters of
a document are classified: the cost per document is then bounded, and a web page's
language is settled well within them.
"""
from __future__ import annotations

import importlib

from trainer.config import ConfigError

PREFIX_CHARS = 1000
# langid 1.1.6's classes (LanguageIdentifier.nb_classes); listed here so a bad code fails
# before the 3-5 s model load. tests/test_language.py checks the list against langid.
CODES = ('af am an ar as az be bg bn br bs ca cs cy da de dz el en eo es et eu fa fi fo fr ga '
         'gl gu he hi hr ht hu hy id is it ja jv ka kk km kn ko ku ky la lb lo lt lv mg mk ml '
         'mn mr ms mt nb ne nl nn no oc or pa pl ps pt qu ro ru rw se si sk sl sq sr sv sw ta '
         'te th tl tr ug uk ur vi vo wa xh zh zu').split()

_IDENTIFIER = None  # One per process: loading the model takes seconds.


def check(code: str, hook: str):
  """Fails on an unknown code or a hook that does not import, before any work."""
  if code and code not in CODES:
    raise ConfigError(f'--language={code!r}: not a language langid knows; use an ISO 639-1 '
                      f'code such as en, de, fr (one of {" ".join(CODES)})')
  if hook:
    load_hook(hook)


def load_hook(spec: str):
  """The function named by ``module:function``."""
  module, _, name = spec.partition(':')
  try:
    return getattr(importlib.import_module(module), name)
  except (ImportError, AttributeError, ValueError) as e:
    raise ConfigError(f'--language_filter={spec!r}: cannot import it ({e}); '
                      'write module:function, the function taking a document and returning '
                      'True to keep it') from None


def detect(text: str) -> str:
  """langid's language code for the start of ``text``."""
  global _IDENTIFIER
  if _IDENTIFIER is None:
    from langid.langid import LanguageIdentifier, model
    _IDENTIFIER = LanguageIdentifier.from_modelstring(model, norm_probs=False)
  return _IDENTIFIER.classify(text[:PREFIX_CHARS])[0]


def keeper(code: str, hook: str):
  """A function text -> keep?, combining ``--language`` and the hook; None if neither is set."""
  hook_fn = load_hook(hook) if hook else None
  if not code and not hook_fn:
    return None

  def keep(text: str) -> bool:
    if code and detect(text) != code:
      return False
    return hook_fn is None or bool(hook_fn(text))
  return keep
