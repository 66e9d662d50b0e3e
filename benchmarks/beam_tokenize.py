"""Apache Beam DirectRunner: GPT-2-tokenize ../shared/data documents (engine evaluation, docs/design.md).

    python -m venv --system-site-packages /tmp/beamvenv
    /tmp/beamvenv/bin/pip install apache-beam==2.77.0   # downgrades protobuf: keep it apart
    /tmp/beamvenv/bin/python benchmarks/beam_tokenize.py 1   # then 2 (workers)
"""
import os, sys, time
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'shared', 'data')
BPE = os.path.join(SHARED, 'gpt2_bpe')
_enc = None
def encode(text):
  global _enc
  if _enc is None:
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str
    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=BPE+'/vocab.bpe', encoder_json_file=BPE+'/encoder.json')
    _enc = tiktoken.Encoding(name='gpt2', explicit_n_vocab=50257, pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={'<|endoftext|>': 50256})
  return len(_enc.encode_ordinary(text))
def main(workers):
  text = open(os.path.join(SHARED, 'wikitext-2-raw', 'wiki.test.raw')).read() + open(os.path.join(SHARED, 'tinyshakespeare', 'input.txt')).read()
  docs = [f'{i} ' + d for i in range(4) for d in text.split('\n\n')]
  mb = sum(len(d) for d in docs) * 1 / 1e6
  opts = PipelineOptions(['--runner=DirectRunner', f'--direct_num_workers={workers}', '--direct_running_mode=multi_processing'])
  t = time.perf_counter()
  with beam.Pipeline(options=opts) as p:
    (p | beam.Create(docs, reshuffle=False) | beam.Map(encode) | beam.CombineGlobally(sum) | beam.Map(lambda n: print('tokens', n)))
  s = time.perf_counter() - t
  print(f'beam workers={workers}: {mb:.1f} MB in {s:.1f} s = {mb/s:.2f} MB/s')
if __name__ == '__main__':
  main(int(sys.argv[1]))
