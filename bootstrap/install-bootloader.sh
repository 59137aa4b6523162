#!/bin/sh
# kiln bootstrap: runs ONCE as PID 1 (kernel `init=`) in a throwaway QEMU boot of the freshly made base disk,
# where /dev/vda is an ordinary disk. Installs GRUB for BIOS (into the BIOS boot partition) and for UEFI
# (removable path EFI/BOOT/BOOTX64.EFI on the ESP, no NVRAM entry), writes grub.cfg, deletes itself and
# powers the VM off. kiln checks the serial console for the KILN-BOOTLOADER-OK marker.
set -eu
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc 2>/dev/null || true
mount -t sysfs sysfs /sys 2>/dev/null || true
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
mount -o remount,rw /
mkdir -p /boot/efi /run
mount /boot/efi
echo "kiln: grub-install i386-pc"
grub-install --target=i386-pc /dev/vda
echo "kiln: grub-install x86_64-efi"
grub-install --target=x86_64-efi --efi-directory=/boot/efi --removable --no-nvram
echo "kiln: update-grub"
update-grub
umount /boot/efi
rm -f /usr/local/sbin/kiln-install-bootloader
sync
mount -o remount,ro / || true
echo "KILN-BOOTLOADER-OK"
echo o > /proc/sysrq-trigger
sleep 60
