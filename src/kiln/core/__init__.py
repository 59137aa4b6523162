"""core: what every other wing stands on.

Errors and exit codes, the per-run `Runtime`, `proc.run` (the one way to run a program), the progress
interface, the reader for user files, the build-directory contract and the paths kiln's data lives at.

Imports: the standard library and third-party packages only; never another kiln wing.
"""
