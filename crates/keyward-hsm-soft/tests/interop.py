"""Independent implementation for Keyward's interoperability tests (Python `cryptography`).

Each subcommand takes hex arguments and prints hex results, so the Rust tests can drive it without a shared
library. Nothing here is used by Keyward itself.
"""
import os
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
from cryptography.exceptions import InvalidSignature

HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
CURVES = {
    "ECC_NIST_P256": ec.SECP256R1,
    "ECC_NIST_P384": ec.SECP384R1,
    "ECC_NIST_P521": ec.SECP521R1,
    "ECC_SECG_P256K1": ec.SECP256K1,
}


def h(b):
    return b.hex()


def sig_params(alg):
    """Maps a Keyward signing algorithm name to (hash, padding-or-None)."""
    if alg == "ED25519":
        return None, None
    size = alg.rsplit("_", 1)[1]
    hsh = HASHES[size]()
    if alg.startswith("RSASSA_PSS"):
        return hsh, padding.PSS(mgf=padding.MGF1(hsh), salt_length=hsh.digest_size)
    if alg.startswith("RSASSA_PKCS1"):
        return hsh, padding.PKCS1v15()
    return hsh, None


def verify(spki, alg, msg, sig, prehashed=False):
    key = serialization.load_der_public_key(spki)
    hsh, pad = sig_params(alg)
    try:
        if alg == "ED25519":
            key.verify(sig, msg)
        else:
            algo = utils.Prehashed(hsh) if prehashed else hsh
            if isinstance(key, rsa.RSAPublicKey):
                key.verify(sig, msg, pad, algo)
            else:
                key.verify(sig, msg, ec.ECDSA(algo))
        return "ok"
    except InvalidSignature:
        return "bad"


def sign(spec, alg, msg):
    if spec == "ED25519":
        key = ed25519.Ed25519PrivateKey.generate()
        sig = key.sign(msg)
    elif spec.startswith("RSA_"):
        key = rsa.generate_private_key(public_exponent=65537, key_size=int(spec[4:]))
        hsh, pad = sig_params(alg)
        sig = key.sign(msg, pad, hsh)
    else:
        key = ec.generate_private_key(CURVES[spec]())
        hsh, _ = sig_params(alg)
        sig = key.sign(msg, ec.ECDSA(hsh))
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return h(spki) + " " + h(sig)


def oaep(hash_name):
    hsh = hashes.SHA1() if hash_name == "1" else hashes.SHA256()
    return padding.OAEP(mgf=padding.MGF1(hsh), algorithm=hsh, label=None)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "verify":
        spki, alg, msg, sig = bytes.fromhex(args[0]), args[1], bytes.fromhex(args[2]), bytes.fromhex(args[3])
        print(verify(spki, alg, msg, sig, prehashed=len(args) > 4))
    elif cmd == "sign":
        print(sign(args[0], args[1], bytes.fromhex(args[2])))
    elif cmd == "oaep-encrypt":
        key = serialization.load_der_public_key(bytes.fromhex(args[0]))
        print(h(key.encrypt(bytes.fromhex(args[2]), oaep(args[1]))))
    elif cmd == "oaep-decrypt":
        key = serialization.load_der_private_key(bytes.fromhex(args[0]), password=None)
        print(h(key.decrypt(bytes.fromhex(args[2]), oaep(args[1]))))
    elif cmd == "ecdh":
        ours = serialization.load_der_public_key(bytes.fromhex(args[1]))
        mine = ec.generate_private_key(CURVES[args[0]]())
        shared = mine.exchange(ec.ECDH(), ours)
        spki = mine.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        print(h(spki) + " " + h(shared))
    elif cmd == "byok-wrap":
        key = serialization.load_der_public_key(bytes.fromhex(args[0]))
        ephemeral = os.urandom(32)
        rsa_part = key.encrypt(ephemeral, oaep("256"))
        print(h(rsa_part + aes_key_wrap_with_padding(ephemeral, bytes.fromhex(args[1]))))
    else:
        raise SystemExit("unknown command " + cmd)


if __name__ == "__main__":
    main()
