"""CRLs made by the openssl CLI (``openssl ca -gencrl``, ``openssl crl -gendelta``), to show the
link reads base + delta CRLs and partitions as another CA tool writes them.

Rules kept here:

* Every CRL is written by ``openssl`` itself, from an ``openssl ca`` database (``index.txt``,
  ``crlnumber``) beside the CA's certificate and key; nothing here builds or parses a CRL.
* ``revoke`` records a revocation (``openssl ca -revoke -crl_reason``); ``complete`` writes a
  complete CRL of everything recorded (with ``crl_extensions`` such as an
  issuingDistributionPoint when asked); ``delta`` writes the delta between two complete CRLs
  (``openssl crl -gendelta``): its DeltaCRLIndicator names the older CRL's number, its CRL
  number is the newer one's, its entries are those only the newer one lists.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

__all__ = ["OpensslCrlIssuer"]

_CONFIG = """\
[ca]
default_ca = crl_ca

[crl_ca]
database         = {directory}/index.txt
crlnumber        = {directory}/crlnumber
default_md       = sha256
default_crl_days = 7
{crl_extensions_line}

[crl_ext]
{crl_extensions}
"""


class OpensslCrlIssuer:
    """An ``openssl ca`` database for one CA (certificate + key files), writing its CRLs."""

    def __init__(self, directory: Path, certificate: Path, key: Path, *, first_number: int = 1):
        openssl = shutil.which("openssl")
        if openssl is None:
            raise RuntimeError("the openssl CLI is not on PATH; install OpenSSL 3 to run this")
        self._openssl = openssl
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.certificate, self.key = certificate, key
        (self.directory / "index.txt").write_text("")
        (self.directory / "crlnumber").write_text(f"{first_number:02X}\n")

    def _run(self, *args: str | Path) -> None:
        command = [self._openssl, *(str(arg) for arg in args)]
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr}")

    def _config(self, crl_extensions: str) -> Path:
        config = self.directory / "ca.cnf"
        config.write_text(
            _CONFIG.format(
                directory=self.directory,
                crl_extensions_line="crl_extensions = crl_ext" if crl_extensions else "",
                crl_extensions=crl_extensions,
            )
        )
        return config

    def _ca(self, *args: str | Path, crl_extensions: str = "") -> None:
        config = self._config(crl_extensions)
        self._run("ca", "-config", config, "-cert", self.certificate, "-keyfile", self.key, *args)

    def revoke(self, certificate: Path, reason: str = "unspecified") -> None:
        """Record ``certificate`` (PEM, the first certificate in the file) as revoked."""
        self._ca("-revoke", certificate, "-crl_reason", reason)

    def complete(self, out: Path, *, crl_extensions: str = "") -> Path:
        """A complete CRL of every revocation recorded so far, with the next CRL number."""
        self._ca("-gencrl", "-out", out, crl_extensions=crl_extensions)
        return out

    def delta(self, older: Path, newer: Path, out: Path) -> Path:
        """The delta CRL from the complete CRL ``older`` to the complete CRL ``newer``."""
        self._run("crl", "-in", older, "-gendelta", newer, "-key", self.key, "-sha256", "-out", out)
        return out
