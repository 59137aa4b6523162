"""artifacts: what a finished disk is turned into.

The OVA (OVF, stream-optimized VMDK, manifest), the live ISO / netboot / platform formats and the SPDX SBOM.

Imports: `kiln.core` only. Nothing here boots a VM or reads settings; callers pass plain values.
"""
