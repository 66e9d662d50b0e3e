"""A real GCS JSON API on 127.0.0.1 for tests: gcp-storage-emulator in a subprocess.

It keeps its objects on disk (``--data-dir``), so ``stop()`` then ``start()`` on the same
port brings the same bucket back, as storage that went away and returned.
"""
import socket
import subprocess
import sys
import time


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class Emulator:
  """``gs://BUCKET`` served at ``url``; ``env`` points google-cloud-storage, gcsfs and tensorstore at it."""

  def __init__(self, data_dir: str, bucket: str = 'bkt'):
    self.data_dir, self.bucket, self.port = str(data_dir), bucket, free_port()
    self.url = f'http://127.0.0.1:{self.port}'
    self.env = {'STORAGE_EMULATOR_HOST': self.url, 'TENSORSTORE_GCS_HTTP_URL': self.url,
                'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'test-token'}
    self.proc = None

  def start(self):
    cmd = [sys.executable, '-m', 'gcp_storage_emulator', '--data-dir', self.data_dir, 'start',
           '--host', '127.0.0.1', '--port', str(self.port), '--default-bucket', self.bucket, '-q']
    # Its log goes nowhere: it prints tracebacks for requests that clients close early.
    self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
      assert self.proc.poll() is None, 'the storage emulator exited at start'
      try:
        socket.create_connection(('127.0.0.1', self.port), timeout=0.5).close()
        return self
      except OSError:
        time.sleep(0.1)
    raise TimeoutError(f'the storage emulator did not listen on {self.url} within 60 s')

  def stop(self):
    if self.proc is not None and self.proc.poll() is None:
      self.proc.terminate()
      try:
        self.proc.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait(timeout=10)
    self.proc = None

  def objects(self, prefix: str = '') -> list[str]:
    """Object names under ``prefix``, read with google-cloud-storage (not the code under test)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage
    client = storage.Client(project='test', credentials=AnonymousCredentials(),
                            client_options={'api_endpoint': self.url})
    return sorted(b.name for b in client.list_blobs(self.bucket, prefix=prefix))

  def read(self, name: str) -> bytes:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage
    client = storage.Client(project='test', credentials=AnonymousCredentials(),
                            client_options={'api_endpoint': self.url})
    return client.bucket(self.bucket).blob(name).download_as_bytes()
