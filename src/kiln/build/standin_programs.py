"""The programs a chroot stage puts in place of the tree's own while it runs (kiln.build.standins diverts
them with dpkg-divert and puts them back on every exit): shell scripts, each saying what it skipped and why,
running the real program (@REAL@, the diverted file) for everything else. kiln.build.standins' module doc
says why each one is there."""

from __future__ import annotations

DIVERTED = ".kiln-stage"
GRUB_NOTE = """#!/bin/sh
# kiln: in place of the real program while a chroot stage runs (kiln.build.standins)
echo "kiln: ${0##*/} skipped in a chroot stage: kiln writes /boot/grub/grub.cfg at finalize from \\
/etc/default/grub and grub.d/*.cfg, for the newest kernel" >&2
exit 0
"""
SERVICE_NOTE = """#!/bin/sh
# kiln: in place of service(8) while a chroot stage runs (kiln.build.standins): no daemon starts in the tree
[ "${1-}" != --full-restart ] || set -- "${2-}" restart
case "${2-}" in
  start|stop|restart|reload|force-reload|try-restart|condrestart|force-stop)
    echo "kiln: service $1 $2 skipped in a chroot stage: no service runs before the image boots" >&2
    exit 0 ;;
esac
exec @REAL@ "$@"
"""
# sysctl(8): a setting (-w, KEY=VALUE) or a file of them (-p, --load, -f, --system) is not applied: the kernel
# a stage runs on is the build host's, whose /proc/sys is read-only to it, and what a build VM applies live
# never reaches its image either. The image's systemd-sysctl applies /etc/sysctl.d at boot, where the boot
# check sees it. The files -p names (or /etc/sysctl.conf) must exist, as sysctl asks; reads run the real one.
SYSCTL_NOTE = r"""#!/bin/sh
# kiln: in place of sysctl(8) while a chroot stage runs (kiln.build.standins)
missing() {
  for f in $1; do
    [ -r "$f" ] || { echo "sysctl: cannot open \"$f\": No such file or directory" >&2; exit 255; }
  done
}
apply= files= named= skip=
for a in "$@"; do
  if [ -n "$skip" ]; then skip=; continue; fi
  if [ -n "$files" ]; then
    case "$a" in -*) ;; *=*) apply=1; continue ;; *) missing "$a"; named=1; continue ;; esac
  fi
  case "$a" in
    -r|--pattern) skip=1 ;;
    -r*|--pattern=*) ;;
    --system|--write|-w) apply=1 ;;
    --load|-p|-f) apply=1 files=1 ;;
    --load=*) apply=1 files=1 named=1; missing "${a#--load=}" ;;
    -p*|-f*) apply=1 files=1 named=1; missing "${a#-?}" ;;
    --*) ;;
    -*[pf]) apply=1 files=1 ;;
    -*w*) apply=1 ;;
    -*) ;;
    *=*) apply=1 ;;
  esac
done
[ -z "$files" ] || [ -n "$named" ] || missing /etc/sysctl.conf
if [ -n "$apply" ]; then
  echo "kiln: sysctl $* not applied in a chroot stage: the image's systemd-sysctl applies /etc/sysctl.conf \
and /etc/sysctl.d at boot" >&2
  exit 0
fi
exec @REAL@ "$@"
"""
# modprobe(8): a module is not loaded into (or removed from) the build host's kernel. The name is looked up
# in the modules of the image's kernel (the newest in /lib/modules with a modules.dep: a headers package
# makes a directory without one), as `modprobe --dry-run` finds it, so a name that kernel lacks fails as it
# would in a build VM. Queries (--dry-run, --show-depends, --showconfig, ...) run the real one, for that
# kernel unless a version is given. kmod picks its command by the name it is run as, hence perl's exec
# (perl-base is Essential) to run the diverted file as modprobe.
MODPROBE_NOTE = r"""#!/bin/sh
# kiln: in place of modprobe(8) while a chroot stage runs (kiln.build.standins)
real() {
  exec perl -e 'my $p = shift; exec { $p } "modprobe", @ARGV or die "modprobe: $!\n"' @REAL@ "$@"
}
kernel=
for k in $(ls /lib/modules 2>/dev/null | sort -V); do
  [ ! -e "/lib/modules/$k/modules.dep" ] || kernel=$k
done
query= remove= version= skip= all= names=
for a in "$@"; do
  if [ -n "$skip" ]; then skip=; continue; fi
  case "$a" in
    -a|--all) all=1 ;;
    -S|--set-version) version=1 skip=1 ;;
    -S*|--set-version=*) version=1 ;;
    -C|-d|-o|--config|--dirname|--name) skip=1 ;;
    -C*|-d*|-o*|--config=*|--dirname=*|--name=*) ;;
    --remove|--remove-dependencies) remove=1 ;;
    --dry-run|--show|--showconfig|--show-config|--show-depends|--resolve-alias|--show-modversions\
|--dump-modversions|--show-exports|--version|--help) query=1 ;;
    --*) ;;
    -*)
      case "$a" in *[ncDRVh]*) query=1 ;; esac
      case "$a" in *r*) remove=1 ;; esac ;;
    *) [ -n "$names" ] && [ -z "$all" ] || names="$names $(printf '%s' "$a" | tr - _)" ;;
  esac
done
if [ -n "$query" ]; then
  if [ -n "$version" ] || [ -z "$kernel" ]; then real "$@"; fi
  real -S "$kernel" "$@"
fi
if [ -z "$remove" ] && [ -n "$kernel" ]; then
  err=$( (real --dry-run -S "$kernel" "$@" >/dev/null) 2>&1 ) || {
    rc=$?
    printf '%s\n' "$err" |
      sed "s|not found in directory /lib/modules/|not in the image's kernel, /lib/modules/|" >&2
    exit $rc
  }
fi
# what Ansible's modprobe module then finds in /proc/modules (/run/kiln-stage/image_kernel.py), as in a VM
loaded=/run/kiln-stage/loaded
for name in $names; do
  if [ -n "$remove" ]; then
    [ ! -f "$loaded" ] || { grep -vxF "$name" "$loaded" > "$loaded.new"; mv "$loaded.new" "$loaded"; }
  elif [ -d "${loaded%/*}" ] && ! grep -qxF "$name" "$loaded" 2>/dev/null; then
    echo "$name" >> "$loaded"
  fi
done
echo "kiln: modprobe $* skipped in a chroot stage: the build host's kernel is not the image's; \
/etc/modules-load.d loads a module at boot" >&2
exit 0
"""
# dd(1): free-space zeroing (`dd if=/dev/zero of=/EMPTY bs=1M; rm /EMPTY`, common in images' cleanup, so that
# a VM's disk compresses well) makes its file and writes nothing into it. In a build VM it ends at the disk's
# end; in a chroot the build host's filesystem is the disk, and finalize makes a new filesystem, whose free
# space is zero already. Any other dd (a count, a device, another input) runs the real one.
DD_NOTE = r"""#!/bin/sh
# kiln: in place of dd(1) while a chroot stage runs (kiln.build.standins)
src= dst= count= keep=
for a in "$@"; do
  case "$a" in
    if=*) src=${a#if=} ;;
    of=*) dst=${a#of=} ;;
    count=*) count=1 ;;
    conv=*notrunc*) keep=1 ;;
  esac
done
case "$src:$count:$dst" in
  /dev/zero::/dev/*|/dev/zero::) ;;
  /dev/zero::*)
    if [ -z "$keep" ]; then : > "$dst" || exit 1; fi
    echo "kiln: dd $* skipped in a chroot stage: finalize makes a new filesystem, its free space zero" >&2
    exit 0 ;;
esac
exec @REAL@ "$@"
"""
# swapoff(8): the swap a stage sees (/proc/swaps) is the build host's, which no role means to turn off (the
# stage's wall refuses it); a build VM booted from the base disk has none, so `swapoff -a` there does
# nothing and succeeds. The fstab entries a role comments out are the tree's, and stay its work.
SWAPOFF_NOTE = r"""#!/bin/sh
# kiln: in place of swapoff(8) while a chroot stage runs (kiln.build.standins)
case " $* " in
  *" -h "*|*" --help "*|*" -V "*|*" --version "*) exec @REAL@ "$@" ;;
esac
echo "kiln: swapoff $* skipped in a chroot stage: the swap here is the build host's; the image has none \
until it boots" >&2
exit 0
"""
# journalctl(1)'s requests to journald (`--rotate` before `--vacuum-time`, in image-builder's sysprep and
# many cleanup roles): no journald runs in a stage ("Failed to connect to /run/systemd/journal/..."), and
# the tree holds no journal of a boot. They are dropped with a note; what is left (the vacuuming, which works
# on the files, or any query) runs the real one, and nothing at all when only requests were given.
JOURNALCTL_NOTE = r"""#!/bin/sh
# kiln: in place of journalctl(1) while a chroot stage runs (kiln.build.standins)
n=$# asked= vacuum=
while [ "$n" -gt 0 ]; do
  a=$1; shift; n=$((n - 1))
  case "$a" in
    --rotate|--flush|--sync|--relinquish-var|--smart-relinquish-var) asked="$asked $a" ;;
    *) case "$a" in --vacuum-*) vacuum=1 ;; esac
       set -- "$@" "$a" ;;
  esac
done
[ -n "$asked" ] || exec @REAL@ "$@"
echo "kiln: journalctl$asked skipped in a chroot stage: no journald runs here; the image's starts at boot" >&2
[ -z "$vacuum" ] || exec @REAL@ "$@"
exit 0
"""
# mount(8): what a build VM's role mounts is the image's own file systems, from its fstab: a remount with new
# options (`mount -o remount,hidepid=2 /proc`, Ansible's mount module when it changed an fstab entry of a
# mounted path), `mount -a`, and one path (a mount point or source) that the fstab lists, not as swap (the
# module's `mount [-T FSTAB] PATH` for `state: mounted`). In a stage the mounts are kiln's and the stage's
# wall refuses mounting; the image mounts its fstab at boot, with its options, where the boot check sees
# them. Those are skipped with a note; any other mount (a source and a target, a bind, a path the fstab does
# not list, --make-*) runs the real one, which the wall refuses. Short options are read letter by letter, a
# value attached or not (-tvfat, -T/etc/fstab.d/x, -oremount).
MOUNT_NOTE = r"""#!/bin/sh
# kiln: in place of mount(8) while a chroot stage runs (kiln.build.standins)
remount= all= fstab=/etc/fstab n=0 target= skip= real=
opts() { case ",$1," in *,remount,*) remount=1 ;; esac; }
for a in "$@"; do
  case "$skip" in
    o) opts "$a"; skip=; continue ;;
    T) fstab=$a; skip=; continue ;;
    x) skip=; continue ;;
    t) skip=; n=$((n + 1)); target=$a; continue ;;
  esac
  case "$a" in
    -o|--options) skip=o ;;
    --options=*) opts "${a#--options=}" ;;
    -T|--fstab) skip=T ;;
    --fstab=*) fstab=${a#--fstab=} ;;
    --all) all=1 ;;
    --help|--version|--make-*|--bind|--rbind|--move) real=1 ;;
    --source=*|--target=*) n=$((n + 1)); target=${a#*=} ;;
    --source|--target) skip=t ;;
    --*=*) ;;
    --types|--test-opts|--label|--uuid|--namespace|--target-prefix|--options-mode|--options-source\
|--map-users|--map-groups) skip=x ;;
    --*) ;;
    -?*)
      rest=${a#-}
      while [ -n "$rest" ]; do
        c=${rest%"${rest#?}"}; rest=${rest#?}
        case "$c" in
          h|V|B|R|M) real=1 ;;
          a) all=1 ;;
          o) if [ -n "$rest" ]; then opts "$rest"; else skip=o; fi; break ;;
          T) if [ -n "$rest" ]; then fstab=$rest; else skip=T; fi; break ;;
          t|O|L|U|N) [ -n "$rest" ] || skip=x; break ;;
        esac
      done ;;
    *) n=$((n + 1)); target=$a ;;
  esac
done
[ -z "$real" ] && [ $# -gt 0 ] || exec @REAL@ "$@"
listed() {
  [ -r "$fstab" ] || return 1
  t=$1 awk 'function plain(s) {
      gsub(/\\040/, " ", s); gsub(/\\011/, "\t", s); gsub(/\\134/, "\\", s); return s }
    $1 !~ /^#/ && $3 != "swap" && (plain($2) == ENVIRON["t"] || plain($1) == ENVIRON["t"]) { found = 1 }
    END { exit !found }' "$fstab"
}
if [ -n "$remount" ] || [ -n "$all" ] || { [ "$n" = 1 ] && listed "$target"; }; then
  echo "kiln: mount $* skipped in a chroot stage: the image mounts its file systems from /etc/fstab at \
boot, with their options" >&2
  exit 0
fi
exec @REAL@ "$@"
"""
# initramfs-tools copies /sbin/modprobe into every initrd it builds (a kernel a stage installs gets one): a
# hook of the stage, run after the packages' own, puts the real program in place of any stand-in copied
INITRAMFS_HOOK = "/etc/initramfs-tools/hooks/zz-kiln-stage"
HOOK = r"""#!/bin/sh
# kiln: while a chroot stage runs only (kiln.build.standins): no stand-in goes into an initrd
[ "$1" != prereqs ] || exit 0
. /usr/share/initramfs-tools/hook-functions
for p in @PATHS@; do
  for d in "$DESTDIR$p" "$DESTDIR/usr$p"; do
    if [ -f "$d" ] && [ ! -L "$d" ] && grep -q '^# kiln: in place of' "$d"; then
      rm -f "$d"
      if [ -L "$p@DIVERTED@" ]; then cp -aZ "$p@DIVERTED@" "$d"
      else copy_exec "$p@DIVERTED@" "${d#"$DESTDIR"}"; fi
    fi
  done
done
exit 0
"""
DIVERSIONS = {  # a program of the tree, and what stands in for it while a stage runs
    "/usr/sbin/update-grub": GRUB_NOTE,
    "/usr/sbin/grub-mkconfig": GRUB_NOTE,
    "/usr/sbin/service": SERVICE_NOTE,
    "/sbin/sysctl": SYSCTL_NOTE,
    "/sbin/modprobe": MODPROBE_NOTE,
    "/bin/dd": DD_NOTE,
    "/sbin/swapoff": SWAPOFF_NOTE,
    "/bin/journalctl": JOURNALCTL_NOTE,
    "/bin/mount": MOUNT_NOTE,
}
# diverted even where the tree lacks them, so that GRUB installed during the stage lands beside its stand-in;
# every other program gets a stand-in only where the tree has it
EVEN_IF_MISSING = ("/usr/sbin/update-grub", "/usr/sbin/grub-mkconfig")
