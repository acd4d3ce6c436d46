// cbor-x requires cbor-extract inside try/catch and falls back to pure JavaScript when it throws.
throw new Error("cbor-extract is left out on purpose (tests/interop/no-native-cbor)");
