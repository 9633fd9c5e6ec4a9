"""``camstream tls generate DIR``: a self-signed certificate for this machine, for https.

Browsers give a page the camera only over https (or on localhost), so a phone streaming from
``/camera`` needs ingest on https (``serve --certfile DIR/cert.pem --keyfile DIR/key.pem``).
The certificate names this machine's host names and addresses (and any ``--host`` given), so
a phone that trusts it once connects without warnings. Made with the ``cryptography`` library:
an ECDSA P-256 key, valid 825 days (the longest that iOS accepts), marked as its own CA so that
phones can install it as a trusted certificate.
"""
from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import socket
from pathlib import Path

VALID_DAYS = 825


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``tls`` verb (registered by camstream.cli)."""
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True,
                                    parser_class=type(parser))
    gen = actions.add_parser("generate", help="make DIR/cert.pem and DIR/key.pem",
                             description="Make a self-signed certificate (DIR/cert.pem) and "
                             "its key (DIR/key.pem, mode 0600) for this machine's names and "
                             "addresses, and say how a phone accepts it.")
    gen.add_argument("dir", metavar="DIR")
    gen.add_argument("--host", action="append", default=[], metavar="NAME_OR_IP",
                     help="another name or address to put in the certificate (repeat for "
                     "more), e.g. the address phones use to reach this machine")
    gen.add_argument("--force", action="store_true", help="replace a certificate already there")


def machine_names() -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) this machine answers to, found without the network."""
    names = {"localhost", socket.gethostname()}
    try:
        names.add(socket.getfqdn())
    except OSError:
        pass
    addresses = {"127.0.0.1", "::1"}
    for name in list(names):
        try:
            for info in socket.getaddrinfo(name, None):
                addresses.add(info[4][0].split("%")[0])
        except OSError:
            pass
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:  # the address of the default route's interface; a UDP connect sends nothing
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))
                addresses.add(s.getsockname()[0])
        except OSError:
            pass
    return sorted(n for n in names if n), sorted(addresses)


def generate(folder: str, extra: list[str], force: bool = False) -> tuple[Path, Path, list[str]]:
    """Write DIR/cert.pem and DIR/key.pem; return their paths and the names they cover."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    names, addresses = machine_names()
    for item in extra:
        try:
            addresses.append(str(ipaddress.ip_address(item)))
        except ValueError:
            names.append(item)
    sans = [x509.DNSName(n) for n in dict.fromkeys(names)]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in dict.fromkeys(addresses)]
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"camstream on {names[-1]}"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "camstream")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = target / "cert.pem", target / "key.pem"
    if not force and (cert_path.exists() or key_path.exists()):
        raise FileExistsError(f"{cert_path} or {key_path} exists already (--force replaces "
                              "them; phones that trusted the old one must trust the new one)")
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path, list(dict.fromkeys(names)) + list(dict.fromkeys(addresses))


def run(args: argparse.Namespace) -> int:
    from camstream.cli.args import CliError
    try:
        cert, key, covered = generate(args.dir, args.host, args.force)
    except FileExistsError as e:
        raise CliError(str(e)) from None
    except OSError as e:
        raise CliError(f"{args.dir}: {e.strerror}") from None
    except ValueError as e:  # a --host the certificate cannot hold
        raise CliError(f"--host: {e}") from None
    reachable = [a for a in covered if a[0].isdigit() and not a.startswith("127.")]
    example = reachable[0] if reachable else "THIS-MACHINE"
    print(f"made {cert} and {key} (mode 0600), valid {VALID_DAYS} days, for: "
          f"{', '.join(covered)}")
    print(f"""
Serve https with them:
    camstream serve -a --certfile {cert} --keyfile {key}

On the phone (same network), open https://{example}:8080/camera and either
  - accept the warning once (Chrome: Advanced > Proceed; Firefox: Advanced > Accept the
    risk; Safari: Show details > visit this website), or
  - trust the certificate for good: copy {cert.name} to the phone, then
    Android: Settings > Security > Encryption & credentials > Install a certificate >
             CA certificate;
    iOS: open the file, Settings > Profile downloaded > Install, then Settings > General >
         About > Certificate Trust Settings > enable camstream.
A name or address missing from the list above? Make it again with --host NAME_OR_IP --force.""")
    return 0
