"""Live-format boot entries carry the image's extra kernel parameters (the VM tests boot them)."""

from __future__ import annotations

from kiln.artifacts import formats


def test_live_command_line_adds_the_images_extra_kernel_params() -> None:
    assert formats.live_cmdline() == formats.LIVE_CMDLINE
    assert formats.live_cmdline("mitigations=auto nosoftlockup").endswith(" mitigations=auto nosoftlockup")
    script = formats.ipxe_script("n", "http://h:1", "ds=nocloud-net;s=http://h:1/seed/", "mitigations=auto")
    (kernel,) = [line for line in script.splitlines() if line.startswith("kernel ")]
    assert kernel.split()[2:] == [
        *formats.LIVE_CMDLINE.split(), "mitigations=auto", "fetch=${base}/filesystem.squashfs", "ip=dhcp",
        "ds=nocloud-net;s=http://h:1/seed/",
    ]  # fmt: skip
    plain = formats.ipxe_script("n", "http://h:1")
    assert "mitigations" not in plain and not any(line.endswith(" ") for line in plain.splitlines())
