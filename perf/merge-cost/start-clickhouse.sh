#!/bin/sh
# start-clickhouse.sh DIR PORT: a private clickhouse-server for server.py (DIR is wiped)
D=$1; P=$2; rm -rf $D; mkdir -p $D
cat > $D/config.xml <<X
<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>$D/server.log</log><errorlog>$D/error.log</errorlog><console>0</console></logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>$P</tcp_port>
  <http_port>$((P+1))</http_port>
  <path>$D/data/</path>
  <tmp_path>$D/tmp/</tmp_path>
  <user_files_path>$D/user_files/</user_files_path>
  <format_schema_path>$D/format_schemas/</format_schema_path>
  <users_config>users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>268435456</mark_cache_size>
  <uncompressed_cache_size>268435456</uncompressed_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
</yandex>
X
cat > $D/users.xml <<X
<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password><networks><ip>::/0</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
X
cd $D && nohup clickhouse-server --config-file=$D/config.xml >/dev/null 2>&1 &
echo $! > $D/pid
for i in $(seq 1 60); do clickhouse-client --port $P -q 'select 1' >/dev/null 2>&1 && break; sleep 0.5; done
