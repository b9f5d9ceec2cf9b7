#!/usr/bin/env python3
"""Import cycles between the modules of each workspace crate.

Every `crate::`, `super::` and `self::` path in a file's code (comments and a trailing
`#[cfg(test)] mod tests` dropped) is an edge from that file's module to the deepest module it
names; each edge is lifted to the two children of the modules' common parent, and a cycle
among siblings fails. Cycles between crates are impossible (cargo refuses them).

    python3 scripts/module_cycles.py      # exit 1 and a list when there is a cycle
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
def modpath(root,path):
    rel=os.path.relpath(path,root)[:-3].split('/')
    if rel[-1] in ('mod','lib'): rel=rel[:-1]
    return tuple(rel)
found = False
for crate in sorted(os.path.join(ROOT, 'crates', c, 'src') for c in os.listdir(os.path.join(ROOT, 'crates'))):
    mods={}
    for dp,_,fs in os.walk(crate):
        for f in fs:
            if f.endswith('.rs'):
                p=os.path.join(dp,f); mods[modpath(crate,p)]=p
    edges=set()
    for m,p in mods.items():
        src=re.sub(r'//.*','',open(p).read())
        i=src.find('#[cfg(test)]')
        if i>=0 and 'mod tests' in src[i:i+60]: src=src[:i]
        isdir=p.endswith('mod.rs') or p.endswith('lib.rs') or p.endswith('main.rs')
        here=m if isdir else m  # module path of this file
        for path in re.findall(r'\b((?:crate|super|self)(?:::\w+)+)',src):
            segs=path.split('::')
            if segs[0]=='crate': base=(); rest=segs[1:]
            elif segs[0]=='self': base=here; rest=segs[1:]
            else:
                base=here
                while segs and segs[0]=='super':
                    base=base[:-1]; segs=segs[1:]
                rest=segs
            tgt=base
            for s in rest:
                if tgt+(s,) in mods: tgt=tgt+(s,)
                else: break
            if tgt!=m and tgt!=() : edges.add((m,tgt))
    # lift to sibling level and find cycles
    sib=set()
    for a,b in edges:
        k=0
        while k<min(len(a),len(b)) and a[k]==b[k]: k+=1
        if k<len(a) and k<len(b):
            sib.add((a[:k+1],b[:k+1]))
    g={}
    for a,b in sib: g.setdefault(a,set()).add(b)
    def reach(s,t):
        st=[s];seen={s}
        while st:
            x=st.pop()
            for y in g.get(x,()):
                if y==t: return True
                if y not in seen: seen.add(y); st.append(y)
        return False
    cyc=sorted({tuple(sorted(('/'.join(a),'/'.join(b)))) for a,b in sib if reach(b,a)})
    name = os.path.basename(os.path.dirname(crate))
    print(f'{name}: {len(sib)} edges between sibling modules, cycles: {cyc or "none"}')
    found = found or bool(cyc)
sys.exit(1 if found else 0)
