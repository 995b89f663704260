"""The online feature state, the one owner of its format: the protocol every backend
implements (`protocol`), one module per backend (`sqlite`, `redis`) and the factory that opens
the configured one by name (`factory`). No backend imports another."""
