// pgJDBC everyday tasks through the breakglass gateway; one "task=result" line per task.
// Run: java -cp postgresql.jar CompatCheck.java PORT TOKEN CA_FILE
import java.sql.*;
import java.util.Properties;

public class CompatCheck {
    static Connection connect(String[] a, String schema) throws SQLException {
        Properties p = new Properties();
        p.setProperty("user", "erin");
        p.setProperty("password", a[1]);
        p.setProperty("sslmode", "verify-full");
        p.setProperty("sslrootcert", a[2]);
        p.setProperty("ApplicationName", "jdbc-compat");
        if (schema != null) p.setProperty("currentSchema", schema);
        return DriverManager.getConnection("jdbc:postgresql://127.0.0.1:" + a[0] + "/shop", p);
    }

    static String state(SQLException e) { return "error " + e.getSQLState(); }

    public static void main(String[] a) throws Exception {
        try (Connection c = connect(a, null)) {
            // fetchSize: a cursor-style read (Execute with a row limit) inside a transaction
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                s.setFetchSize(50);
                ResultSet r = s.executeQuery("select id from orders order by id /* fetchsize */");
                int n = 0;
                while (r.next()) n++;
                System.out.println("fetchSize=" + n);
            }
            c.commit();

            // prepared statement with binary-transferred parameters (prepareThreshold=1 forces it)
            try (PreparedStatement ps = c.prepareStatement("select name from customers where id = ? /* prepared */")) {
                ps.unwrap(org.postgresql.PGStatement.class).setPrepareThreshold(-1);
                ps.setLong(1, 42L);
                ResultSet r = ps.executeQuery();
                r.next();
                System.out.println("prepared=" + r.getString(1));
            }
            c.commit();

            // write: refused on read-only grants (42501), works on read-write (rolled back)
            try (Statement s = c.createStatement()) {
                int k = s.executeUpdate("update customers set name = name where id = 3");
                System.out.println("write=" + k);
            } catch (SQLException e) {
                System.out.println("write=" + state(e));
            }
            c.rollback();

            // setReadOnly: pgJDBC begins READ ONLY transactions; the server refuses the write
            c.setReadOnly(true);
            try (Statement s = c.createStatement()) {
                ResultSet r = s.executeQuery("select count(*) from customers");
                r.next();
                System.out.println("readOnlySelect=" + r.getLong(1));
                try {
                    s.executeUpdate("update customers set name = name where id = 3");
                    System.out.println("readOnlyWrite=ok");
                } catch (SQLException e) {
                    System.out.println("readOnlyWrite=" + state(e));
                }
            }
            c.rollback();
            c.setReadOnly(false);
            c.setAutoCommit(true);

            // cancel: Statement.cancel() from another thread stops a running query
            try (Statement s = c.createStatement()) {
                java.util.concurrent.atomic.AtomicBoolean done = new java.util.concurrent.atomic.AtomicBoolean();
                Thread t = new Thread(() -> {  // a cancel before the query starts does nothing
                    try {
                        while (!done.get()) { Thread.sleep(300); if (!done.get()) s.cancel(); }
                    } catch (Exception e) { }
                });
                t.start();
                long t0 = System.nanoTime();
                try {
                    s.execute("select pg_sleep(20)");
                    System.out.println("cancel=not cancelled");
                } catch (SQLException e) {
                    System.out.println("cancel=" + state(e));
                }
                done.set(true);
                System.out.println("cancelSeconds=" + (System.nanoTime() - t0) / 1_000_000_000L);
                t.join();
                ResultSet r = s.executeQuery("select 1");
                r.next();
                System.out.println("afterCancel=" + r.getInt(1));
            }
        }
        // currentSchema at connect time (a search_path startup parameter), then setSchema()
        try (Connection c = connect(a, "secret"); Statement s = c.createStatement()) {
            ResultSet r = s.executeQuery("select current_schema()");
            r.next();
            System.out.println("currentSchema=" + r.getString(1));
            c.setSchema("public");
            r = s.executeQuery("select current_schema()");
            r.next();
            System.out.println("setSchema=" + r.getString(1));
        } catch (SQLException e) {
            System.out.println("currentSchema=" + state(e) + " " + e.getMessage().replace('\n', ' '));
        }
    }
}
