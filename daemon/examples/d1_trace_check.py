import re,sys
last={}  # key -> (version, acked)
restart=None; lineno=0; events=[]; stale_vs=0
for line in open(sys.argv[1], errors='replace'):
    lineno+=1
    if 'chd is ready' in line: restart=line[:30]; n_after=0; continue
    if 'worker ready' in line and 'keys=' in line: pass
    m=re.match(r'D1 durable (\S+) v(\d+) acked \[([^\]]*)\]', line)
    if m:
        k,v=m.group(1),int(m.group(2)); acked=[int(x) for x in m.group(3).split(',') if x.strip()]
        if k not in last or last[k][0]<v: last[k]=(v,acked,restart)
        continue
    m=re.match(r'D1 read (\S+) answers \[(.*)\] read_set', line)
    if m:
        k=m.group(1); ans=[(int(a),int(b)) for a,b in re.findall(r'\((\d+), (\d+)\)', m.group(2))]
        if k in last:
            v,acked,r=last[k]
            for node,ver in ans:
                if node in acked and ver<v:
                    events.append((lineno,k,node,ver,v,acked,ans,r,restart))
for e in events[:40]: print(e)
print(len(events),'events')
