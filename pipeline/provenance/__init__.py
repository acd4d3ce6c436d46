"""C2PA Content Credentials: the claim and its assertions, the signer and its keys, the demo CA,
read-back verification. The only place `c2pa` is imported.
"""
