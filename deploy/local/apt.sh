# apt_install PACKAGE...: Debian packages, for deploy/local/stack.sh and deploy/validate.sh
# (sourced; the caller defines `say`). One `apt-get update` per process, before the first
# install. No service may start from a package's postinst (the stack starts its own Redis
# on its own port; only promtool is wanted from prometheus): a policy-rc.d answering 101
# forbids it, put in place for the install only where the machine has none. APT_LEAN=1
# leaves the packages' recommendations out.

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    say "apt-get update"
    apt-get update -qq
    apt_updated=1
  fi
  say "apt-get install $*"
  local policy=/usr/sbin/policy-rc.d placed=0 status=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && placed=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${APT_LEAN:+--no-install-recommends} "$@" >/dev/null || status=$?
  [ "$placed" = 0 ] || rm -f "$policy"
  return "$status"
}
