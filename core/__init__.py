"""The base layer under stages/, train/ and pipeline/: the configuration convention (documented
dataclass fields, their TOML form and overrides), storage (local folders and object stores),
media I/O and file-descriptor plumbing. It imports only schemas/."""
