"""vm: booting disks.

QEMU (accelerator probe, BIOS/UEFI, port forwards, serial log), SSH sessions, cloud-init NoCloud seeds, the
check-boot service that boots a disk to look at it, `kiln boot`/`ssh`, the netboot HTTP server and the
conformance run.

Imports: `kiln.core`, `kiln.config`, `kiln.artifacts`.
"""
