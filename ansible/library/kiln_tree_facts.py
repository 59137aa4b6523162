#!/usr/bin/python
# kiln: the facts of a chroot stage that would describe the build host, set to describe the image instead.
# A chroot stage gathers facts with `setup` and then this module (ANSIBLE_FACTS_MODULES, in that order, and
# ansible_facts_parallel false, so this one wins). kiln reads them off the tree before the playbook runs and
# passes them in KILN_TREE_FACTS (kiln.build.treefacts): `ansible_kernel` is the kernel the finished
# image boots, not the build host's, so `linux-headers-{{ ansible_kernel }}` names a package of the image's
# kernel, as it does in a build VM booted from the base disk; the swap facts are 0, as that VM has none; and
# `ansible_mounts` gains the image's file systems from its fstab (Ansible appends this list to setup's).
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: kiln_tree_facts
short_description: The image's kernel, swap and mount facts in a kiln chroot stage
description:
  - Returns the facts kiln passes in the environment variable KILN_TREE_FACTS (a JSON object, names
    without the ansible_ prefix), so that they replace what setup read off the build host. Run by fact gathering in kiln's chroot stages only.
options: {}
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec={}, supports_check_mode=True)
    try:
        facts = json.loads(os.environ.get("KILN_TREE_FACTS") or "{}")
    except ValueError as exc:
        module.fail_json(msg="KILN_TREE_FACTS: not JSON: %s" % exc)
    if not isinstance(facts, dict):
        module.fail_json(msg="KILN_TREE_FACTS: not a JSON object")
    # as setup names them (ansible_kernel): the name without the prefix would be a second fact beside it
    module.exit_json(changed=False, ansible_facts=dict(("ansible_" + k, v) for k, v in facts.items()))


if __name__ == "__main__":
    main()
