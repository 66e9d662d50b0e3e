"""Language identification speed: langid 1.1.6 vs lingua-language-detector, on WikiText lines.

    pip install langid==1.1.6 lingua-language-detector==2.1.1
    python benchmarks/language.py

CPU seconds (process time), so other jobs on a shared machine distort it less than
wall time; both tools classify the same lines, whole and cut to the first 1,000
characters (what `trainer prepare --language` classifies). Prints MB/s and how many
lines each called English.
"""
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
from data import SHARED  # noqa: E402


def bench(name, docs, classify):
  classify(docs[0])  # Loads models lazily.
  started = time.process_time()
  english = sum(classify(d) for d in docs)
  seconds = time.process_time() - started
  megabytes = sum(len(d.encode()) for d in docs) / 1e6
  print(f'| {name} | {megabytes / seconds:.2f} | {english} / {len(docs)} |')


def main():
  text = open(os.path.join(SHARED, 'wikitext-2-raw', 'wiki.test.raw')).read()
  docs = [d for d in text.split('\n') if len(d.strip()) > 200][:600]
  from langid.langid import LanguageIdentifier, model
  ident = LanguageIdentifier.from_modelstring(model, norm_probs=False)
  from lingua import Language, LanguageDetectorBuilder
  low = LanguageDetectorBuilder.from_all_languages().with_low_accuracy_mode().build()
  high = LanguageDetectorBuilder.from_all_languages().build()
  print('| classifier | MB per CPU-second | English |\n|---|---|---|')
  bench('langid', docs, lambda d: ident.classify(d)[0] == 'en')
  bench('langid, first 1,000 chars', docs, lambda d: ident.classify(d[:1000])[0] == 'en')
  bench('lingua, low accuracy', docs, lambda d: low.detect_language_of(d) == Language.ENGLISH)
  bench('lingua, high accuracy', docs, lambda d: high.detect_language_of(d) == Language.ENGLISH)


if __name__ == '__main__':
  main()
