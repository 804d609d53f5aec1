import time, sys, tempfile
import sqlalchemy as sa
from fleetwarden.store import open_store
from fleetwarden.findings import Finding, Incident
def run(url, schema=None):
    t=time.perf_counter(); st=open_store(url, schema=schema); t_open=time.perf_counter()-t
    n=5000
    st.upsert_devices([{"device_id":f"dev-{i}","ip":f"10.{i//65536%256}.{i//256%256}.{i%256}","last_seen":float(i)} for i in range(n)])
    t=time.perf_counter(); st.upsert_devices([{"device_id":f"dev-{i}","last_seen":float(i+1)} for i in range(n)]); t_up=time.perf_counter()-t
    fs=[Finding(f"dev-{i%n}","scan","scan",0.7,float(i),float(i+60),["e"],["T1046"],record_ids=[f"C{i}"]) for i in range(10000)]
    incs=[Incident(f"dev-{i}","scan","high",70,0.0,1.0,["e"],["T1046"],findings=fs[i::200]) for i in range(200)]
    t=time.perf_counter(); st.record_results("bench", fs, incs, batches=[("flow",10**6,0.0,1.0)]); t_rec=time.perf_counter()-t
    for i in range(1000): pass
    t=time.perf_counter()
    for i in range(200): st.audit_append("bench","x","y",{"i":i})
    t_aud=(time.perf_counter()-t)/200
    t=time.perf_counter(); ok=st.audit_verify(); t_ver=time.perf_counter()-t
    print(f"{st.dialect:10s} open+migrate {t_open*1000:.0f} ms | upsert 5000 devices (merge) {t_up*1000:.0f} ms | record_results 10000 findings+200 incidents {t_rec*1000:.0f} ms | audit_append {t_aud*1000:.2f} ms each | verify {st.counts()['audit_entries']} entries {t_ver*1000:.0f} ms {ok}")
    st.close()
d=tempfile.mkdtemp()
run(f"sqlite:///{d}/b.db")
run("postgresql://postgres@127.0.0.1:5432/test", schema="fw_bench_tmp")
e=sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test")
with e.begin() as c: c.exec_driver_sql("DROP SCHEMA fw_bench_tmp CASCADE")
