# Sourced by the project's scripts: the PATH they run with.
# - /usr/sbin and /sbin, where Debian installs clickhouse-server, nginx and haproxy (a
#   user's PATH does not name them; root's does);
# - ~/.local/bin, where pip puts its scripts when it installs for the user (not root);
# - the Node.js 20 that scripts/setup.sh installs from the npm registry into .tools/node
#   when the system's is older (Debian 12's is 18; playwright-core and the SDK's tests need
#   20), first.
croupier_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH="$PATH:/usr/sbin" ;; esac
case ":$PATH:" in *:/sbin:*) ;; *) PATH="$PATH:/sbin" ;; esac
case ":$PATH:" in *:"$HOME/.local/bin":*) ;; *) PATH="$PATH:$HOME/.local/bin" ;; esac
# (Named whether or not it is there yet: a script that sources this before setup installs
# it runs the installed one afterwards.)
croupier_node="$croupier_root/.tools/node/node_modules/.bin"
case ":$PATH:" in *:"$croupier_node":*) ;; *) PATH="$croupier_node:$PATH" ;; esac
export PATH
