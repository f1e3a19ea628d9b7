#!/bin/sh
# files-entrypoint: nginx from Debian's package as the stage's file host.
#
# What: fills FILE_WRITE_KEY into the configuration template (the only variable in it), hands
# the media volume to nginx's worker user, and runs nginx in the foreground.
# Why: the same configuration as the native lab's file host (stages/lab/src/files.rs): reads for
# everyone, writes (PUT, DELETE, MKCOL) only with the app's key.
set -eu
: "${FILE_WRITE_KEY:?set FILE_WRITE_KEY (the app sends it with every write)}"
case "$FILE_WRITE_KEY" in
    *[!A-Za-z0-9_-]*) echo "files-entrypoint: FILE_WRITE_KEY must be letters, digits, - or _" >&2; exit 1 ;;
esac
sed "s/\${FILE_WRITE_KEY}/$FILE_WRITE_KEY/g" /etc/nginx/templates/default.conf.template \
    > /etc/nginx/conf.d/default.conf
mkdir -p /srv/files/media
chown www-data:www-data /srv/files /srv/files/media
exec nginx -g 'daemon off;'
