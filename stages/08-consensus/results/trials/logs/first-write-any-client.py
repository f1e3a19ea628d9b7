# For each kept drill log folder: when the promoted host took the lock (Patroni's log), when its
# server took connections, and the first write any client had acknowledged after the lock (the
# gateway's access log: POST, PUT or DELETE answered 2xx, logins excluded); with the drill's own
# figures from its result file for the probe.
import re,sys,os,glob,datetime,json
ansi=re.compile(r'\x1b\[[0-9;]*m')
def ts(s):
    s=s.replace(',', '.').replace('T',' ').rstrip('Z')
    return datetime.datetime.fromisoformat(s[:23])
rows=[]
for arg in sys.argv[1:]:
    d,result=arg.split('=')
    lock=None; ready=None; host=None
    for f in sorted(glob.glob(d+'/db-*-postgres-patroni.log')):
        if f.endswith('db-1-postgres-patroni.log'): continue
        lines=[ansi.sub('',l) for l in open(f,errors='replace')]
        for i,l in enumerate(lines):
            if 'promoted self to leader by acquiring session lock' in l:
                lock=ts(l[:23]); host=os.path.basename(f)[:4]
                for m in lines[i:]:
                    if 'ready to accept connections' in m and m[:4]=='2026':
                        ready=ts(m[:23]); break
                break
        if lock: break
    first=None
    for l in open(d+'/gateway-gateway-gateway.log',errors='replace'):
        l=ansi.sub('',l)
        m=re.search(r'method=(POST|PUT|DELETE) path="([^"]*)" status=(2\d\d)',l)
        if m and 'login' not in m.group(2):
            t=ts(l[:26])
            if t>lock: first=t; break
    f=json.load(open(result))['drill']['failover']
    rows.append((os.path.basename(result), host, lock.time().isoformat(timespec='milliseconds'),
        round((ready-lock).total_seconds(),2), round((first-lock).total_seconds(),2),
        round(f['first_write_at_s']-f['leader_key_at_s'],1)))
print('| result file | promoted | lock taken (UTC) | server takes connections, after the lock | first write any client had acknowledged, after the lock | the probe\'s first write, after the drill saw the key |')
print('|---|---|---|---:|---:|---:|')
for r in rows: print('| %s | %s | %s | %.2f s | %.2f s | %.1f s |'%r)
