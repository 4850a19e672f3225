#!/bin/sh
# Your own CA with the openssl CLI (OpenSSL 3): the same files and profiles as `flwrmtls ca`.
# Run it in an empty directory; tests/pki/test_openssl_recipe.py runs this exact script.
set -eu
umask 077                               # private keys: readable by their owner only
mkdir -p ca

cat > ca/openssl.cnf <<'CONF'
[ca]
default_ca = issuing

[issuing]
database         = ca/index.txt
crlnumber        = ca/crlnumber
certificate      = ca/issuing.crt
private_key      = ca/issuing.key
default_md       = sha256
default_crl_days = 7
crl_extensions   = crl_extensions

[crl_extensions]
authorityKeyIdentifier = keyid:always

[root_ca]
basicConstraints       = critical, CA:TRUE, pathlen:1
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash

[issuing_ca]
basicConstraints       = critical, CA:TRUE, pathlen:0
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[server]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectAltName         = DNS:localhost, IP:127.0.0.1    # the names nodes dial the link by
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[client]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = clientAuth
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
CONF

new_key() {  # EC P-256, PKCS#8 PEM
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"
}

# 1. Root CA: self-signed, 10 years. ca.crt is the trust anchor.
new_key ca/root.key
openssl req -new -key ca/root.key -subj "/CN=Example Root CA" -out ca/root.csr
openssl x509 -req -in ca/root.csr -key ca/root.key -days 3650 -sha256 \
    -extfile ca/openssl.cnf -extensions root_ca -out ca.crt

# 2. Issuing CA, signed by the root.
new_key ca/issuing.key
openssl req -new -key ca/issuing.key -subj "/CN=Example Issuing CA" -out ca/issuing.csr
openssl x509 -req -in ca/issuing.csr -CA ca.crt -CAkey ca/root.key -days 3650 -sha256 \
    -extfile ca/openssl.cnf -extensions issuing_ca -out ca/issuing.crt

# 3. Leaves, signed by the issuing CA: issue NAME SUBJECT PROFILE
issue() {
    new_key "$1.key"
    openssl req -new -key "$1.key" -subj "$2" -out "ca/$1.csr"
    openssl x509 -req -in "ca/$1.csr" -CA ca/issuing.crt -CAkey ca/issuing.key -days 365 \
        -sha256 -extfile ca/openssl.cnf -extensions "$3" -out "ca/$1.crt"
    cat "ca/$1.crt" ca/issuing.crt > "$1.pem"   # the chain file: leaf, then issuing CA
}
issue server "/CN=server" server                          # the link (SANs in [server])
issue node-1 "/O=Hospital A/CN=node-1" client             # nodes: the Subject is the identity
issue node-2 "/O=Hospital B/CN=node-2" client
issue alice "/CN=alice/role=operator" client              # a CLI user with the role attribute
chmod 644 ca.crt ca/issuing.crt ./*.pem

# 4. Revoke node-2 and write the CRL (openssl ca keeps its own database of revocations).
touch ca/index.txt
echo 1000 > ca/crlnumber
openssl ca -config ca/openssl.cnf -revoke ca/node-2.crt -crl_reason keyCompromise
openssl ca -config ca/openssl.cnf -gencrl -out crl.pem
chmod 644 crl.pem
