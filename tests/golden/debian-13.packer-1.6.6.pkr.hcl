# Rendered by kiln 0.1.0 for debian-13 (Packer 1.6.6). Do not edit:
# change config/*.json or packer/templates/ and run `kiln render debian-13`.

packer {
  required_version = ">= 1.6.6"
}

source "qemu" "node" {
  vm_name          = "debian-13+kube-v1.36.1.qcow2"
  output_directory = "/kiln-build/packer-output"
  format           = "qcow2"
  disk_compression = true
  disk_interface   = "virtio"
  net_device       = "virtio-net"
  disk_size        = "20480M"
  cpus             = 2
  memory           = 4096
  accelerator      = "tcg"
  headless         = true
  # a stage on a cached base: kiln's bootstrap disk (first booted with its own kernel) or the checked cloud
  # image (kiln.build.cloudimg), or the previous stage's disk, through a qcow2 overlay
  iso_url          = "/kiln-cache/bootstrap/KEY/base.qcow2"
  iso_checksum     = "none"
  disk_image       = true
  use_backing_file = false
  boot_wait        = "1s"  # no boot menu to wait for: the disk boots straight away
  qemuargs         = [
    ["-cpu", "max,-erms,-fsrm"],
    ["-cdrom", "/kiln-build/work/seed.iso"],
    ["-netdev", "user,id=user.0,hostfwd=tcp:127.0.0.1:2299-:22"]
  ]
  ssh_username         = "builder"
  ssh_private_key_file = "/kiln-build/work/key/id_ed25519"
  ssh_timeout          = "60m"
  host_port_min        = 2299
  host_port_max        = 2299
  vnc_bind_address     = "127.0.0.1"
  shutdown_command     = "sudo shutdown -P now"
}


build {
  sources = ["source.qemu.node"]

  # 1. provision: extra_roles_before, kiln's roles, extra_roles_after (ansible/playbook.yml)
  provisioner "ansible" {
    playbook_file    = "@REPO@/ansible/playbook.yml"
    user             = "builder"
    use_proxy        = false
    ansible_env_vars = ["ANSIBLE_HOST_KEY_CHECKING=False", "ANSIBLE_NOCOLOR=True", "ANSIBLE_SSH_RETRIES=3", "ANSIBLE_CONFIG=@REPO@/ansible/ansible.cfg"]
    extra_arguments  = ["--extra-vars", "@/kiln-build/rendered/ansible-vars.json"]
  }

  # 2. kiln:goss-check hook: the in-guest goss specs run against the build VM before sysprep; a non-zero
  #    exit fails the build. Host/port/user come from Packer's communicator, the key is this build's key.
  provisioner "shell-local" {
    inline = ["kiln goss-check --host ${build.Host} --port ${build.Port} --user ${build.User} --key /kiln-build/work/key/id_ed25519 --config /kiln-build/rendered/config.json --phase build"]
  }

  # 3. sysprep: generalize the image (ansible/sysprep.yml); the build user goes at shutdown
  provisioner "ansible" {
    playbook_file    = "@REPO@/ansible/sysprep.yml"
    user             = "builder"
    use_proxy        = false
    ansible_env_vars = ["ANSIBLE_HOST_KEY_CHECKING=False", "ANSIBLE_NOCOLOR=True", "ANSIBLE_SSH_RETRIES=3", "ANSIBLE_CONFIG=@REPO@/ansible/ansible.cfg"]
    extra_arguments  = ["--extra-vars", "@/kiln-build/rendered/ansible-vars.json"]
  }

  post-processor "manifest" {
    output      = "/kiln-build/packer-manifest.json"
    strip_path  = true
    custom_data = {}
  }
}
